//! codex-stdio-bus: a daemon that owns pools of worker processes and routes NDJSON JSON-RPC traffic
//! from many clients to them, keeping each session on one worker and every reply with its client.
//!
//! Module map: [`daemon`] (life cycle) starts the [`supervisor`]s (one per [`slot`] of each
//! [`pool`]) and serves clients through [`transport`]; the [`router`] moves lines between
//! [`client`]s and slots through bounded [`outbox`]es.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod cli;
pub mod client;
pub mod daemon;
pub mod defaults;
pub mod id_map;
pub mod id_token;
pub mod logging;
pub mod metrics;
pub mod outbox;
pub mod pool;
pub mod router;
pub mod signals;
pub mod slot;
pub mod status;
pub mod supervisor;
pub mod transport;
