//! Hot-path protocol pieces of codex-stdio-bus.
//!
//! The bus reads NDJSON JSON-RPC 2.0 from many clients and forwards each line byte for byte to a
//! worker, swapping only the request `id` for its own integer bus id and restoring it on the reply.
//! This crate frames lines ([`framing`]), validates them and locates the routing fields in one pass
//! ([`envelope`]), finds ids inside messages that name earlier requests ([`reference`](mod@reference)), swaps ids
//! ([`rewrite`]) and encodes the bus's own error replies ([`error`]).
//! Everything here is fed untrusted bytes and never panics on any input.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod envelope;
pub mod error;
pub mod framing;
pub mod members;
pub mod reference;
pub mod rewrite;
mod scan;
pub mod tenant;
mod top_id;

pub use envelope::{key_bytes, parse, Envelope, EnvelopeError, Kind, Message, SessionPath, Span};
pub use error::{append_error_reply, append_error_reply_hinted, ErrorHint, ErrorKind, Fault};
pub use framing::{Frame, LineFramer};
pub use members::{
    append_with_member, append_without_members, is_named, top_level_members, Member,
};
pub use reference::{value_at, IdReference, IdReferences};
pub use rewrite::{append_with_bus_id, append_with_token, parse_bus_id};
pub use tenant::{
    append_namespaced, append_with_token_without, append_without, session_prefix,
    AUTHENTICATE_METHOD, TENANT_SEPARATOR,
};
