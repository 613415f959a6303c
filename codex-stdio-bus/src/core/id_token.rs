//! An id token kept until its reply comes back, to be restored byte for byte.
//!
//! Almost every id is short (`17`, `"req-42"`, a UUID string), so it is kept inline: one heap
//! allocation and free less per request on the hot path. Longer ids are boxed.

use std::hash::{Hash, Hasher};
use std::ops::Deref;

/// Longest token kept inline (a quoted 36-character UUID is 38 bytes).
const INLINE: usize = 38;

/// The raw bytes of a JSON id token.
pub(crate) enum IdToken {
    /// A short token, stored in place.
    Inline {
        /// Bytes used in `bytes`.
        len: u8,
        /// The token, padded.
        bytes: [u8; INLINE],
    },
    /// A long token.
    Boxed(Box<[u8]>),
}

impl IdToken {
    /// Copies `token`.
    pub(crate) fn new(token: &[u8]) -> Self {
        if token.len() <= INLINE {
            let mut bytes = [0u8; INLINE];
            bytes[..token.len()].copy_from_slice(token);
            IdToken::Inline {
                len: token.len() as u8,
                bytes,
            }
        } else {
            IdToken::Boxed(token.into())
        }
    }
}

/// Tokens are equal when their bytes are: how a cancellation's id is matched to a request's.
impl PartialEq for IdToken {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for IdToken {}

impl Hash for IdToken {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (**self).hash(state);
    }
}

impl Deref for IdToken {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            IdToken::Inline { len, bytes } => &bytes[..usize::from(*len)],
            IdToken::Boxed(bytes) => bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_long_tokens_come_back_exactly() {
        for token in [
            &b""[..],
            b"1",
            b"1.5e3",
            b"\"0123456789abcdef0123456789abcdef0123\"",
        ] {
            let kept = IdToken::new(token);
            assert!(matches!(kept, IdToken::Inline { .. }));
            assert_eq!(&*kept, token);
        }
        let long = vec![b'x'; INLINE + 1];
        let kept = IdToken::new(&long);
        assert!(matches!(kept, IdToken::Boxed(_)));
        assert_eq!(&*kept, &long[..]);
    }
}
