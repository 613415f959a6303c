//! Where a worker's output goes, as the layers below the router see it.
//!
//! The supervisor and the worker pipes hold a `dyn WorkerSink` instead of the router: they hand
//! over what a worker wrote and the requests it will never answer, and need to know nothing of
//! sessions, clients or metrics. The router implements it.

use std::sync::Arc;
use std::time::Instant;

use codex_bus_protocol::ErrorKind;

use super::slot::{Pending, Slot};

/// The receiver of a worker's output and of its unanswered requests.
pub(crate) trait WorkerSink: Send + Sync + 'static {
    /// One complete stdout line (without its newline) of the worker running as `generation` in
    /// `slot`, read at `read_at`.
    fn worker_line(&self, slot: &Arc<Slot>, generation: u64, line: &[u8], read_at: Instant);

    /// Answers each of `pending` with an error reply of `kind` (with `detail` as `data.detail`):
    /// the worker that was to answer them is gone or too late.
    fn fail(&self, pending: Vec<Pending>, kind: ErrorKind, detail: Option<&str>);

    /// The worker of `slot` exited on its own (a crash, a kill, an exit the daemon did not ask
    /// for): what it was doing for its sessions beyond the requests already failed, such as a
    /// running turn, is lost, and the clients bound to those sessions must be told.
    fn worker_exited(&self, slot: &Arc<Slot>);
}
