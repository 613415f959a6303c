//! Layer 1, the core: the state that routing and supervision share, and nothing that acts on it.
//!
//! [`outbox`] is the one bounded byte queue; [`id_map`] and [`id_token`] keep ids; [`client`] is
//! a client's output side with the worker requests it must answer; [`slot`] is a worker place
//! with its input queue and the requests awaiting its replies (together, the pending book in both
//! directions); [`address`] names a slot without holding it; [`principal`] is who a connection
//! is; [`tenant`] is what the principal's tenant holds against its quotas; [`sink`] is how a worker's output leaves the core; [`log_limit`] keeps a repeated warning
//! from flooding the log; [`worker_events`] keeps the recent worker events the dashboard lists,
//! [`samples`] its ring of counter readings.
//!
//! Imports: the protocol crate and std/tokio only. No metrics, no router, no supervisor: whoever
//! acts on this state counts what it does.

pub(crate) mod address;
pub(crate) mod client;
pub(crate) mod id_map;
pub(crate) mod id_token;
pub(crate) mod log_limit;
pub(crate) mod outbox;
pub(crate) mod principal;
pub(crate) mod samples;
pub(crate) mod sink;
pub(crate) mod slot;
pub(crate) mod tenant;
pub(crate) mod worker_events;
