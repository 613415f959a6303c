//! Capability tokens: a client presents a random secret, the config holds its SHA-256 digest,
//! and digests are compared in constant time (`subtle`), as Codex's `--ws-auth
//! capability-token` does, so neither the file nor the timing of a refusal gives the token away.

use std::sync::Arc;

use codex_bus_config::{TokenEntry, TokenSecret};
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
    /// The table of `entries` (inline and from the tokens file); a `token_file` is read now.
    ///
    /// # Errors
    ///
    /// The same token in two entries (the config checks each list's digests; this checks them
    /// together, and the files' tokens), or a token file that cannot be read or holds only
    /// whitespace. No message holds a token.
    pub(crate) fn new(entries: &[TokenEntry]) -> Result<Self, String> {
        let mut table: Vec<Entry> = Vec::with_capacity(entries.len());
        for entry in entries {
            let digest = match &entry.secret {
                TokenSecret::Sha256(hex) => Digest::from_hex(hex)
                    .ok_or_else(|| "auth.tokens: a sha256 is not 64 hex digits".to_owned())?,
                TokenSecret::TokenFile(path) => read_token_file(path)?,
            };
            if table.iter().any(|e| e.digest == digest) {
                return Err(format!(
                    "auth: the token of tenant '{}' is configured twice (tokens, tokens_file \
                     or token files)",
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

/// The digest of the token in a Codex token file (`--ws-token-file`): the file's text with its
/// surrounding whitespace trimmed, as Codex reads it, so a trailing newline is no part of it.
fn read_token_file(path: &std::path::Path) -> Result<Digest, String> {
    let text = std::fs::read(path).map_err(|e| {
        format!(
            "auth.tokens: cannot read the token_file '{}': {e}",
            path.display()
        )
    })?;
    let token = text.trim_ascii();
    if token.is_empty() {
        return Err(format!(
            "auth.tokens: the token_file '{}' holds no token",
            path.display()
        ));
    }
    Ok(Digest::of(token))
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
                secret: TokenSecret::Sha256(hex("secret-a")),
                subject: Some("ci".into()),
            },
            TokenEntry {
                tenant: "b".into(),
                secret: TokenSecret::Sha256(hex("secret-b").to_ascii_uppercase()),
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
            secret: TokenSecret::Sha256(hex("t")),
            subject: None,
        };
        let error = TokenTable::new(&[entry.clone(), entry]).err().unwrap();
        assert!(error.contains("configured twice"), "{error}");
    }

    #[test]
    fn a_token_file_holds_the_raw_token_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "  file-token\n").unwrap();
        let entry = |secret| TokenEntry {
            tenant: "f".into(),
            secret,
            subject: None,
        };
        let table = TokenTable::new(&[entry(TokenSecret::TokenFile(file.clone()))]).unwrap();
        assert_eq!(&*table.find("file-token").unwrap().tenant, "f");
        assert_eq!(table.find("  file-token\n"), None);
        // The same token by digest and by file is one token configured twice.
        let twice = [
            entry(TokenSecret::TokenFile(file.clone())),
            entry(TokenSecret::Sha256(hex("file-token"))),
        ];
        assert!(TokenTable::new(&twice).is_err());
        std::fs::write(&file, " \n").unwrap();
        let error = TokenTable::new(&[entry(TokenSecret::TokenFile(file))])
            .err()
            .unwrap();
        assert!(error.contains("holds no token"), "{error}");
        let missing = TokenSecret::TokenFile(dir.path().join("absent"));
        let error = TokenTable::new(&[entry(missing)]).err().unwrap();
        assert!(error.contains("cannot read"), "{error}");
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
