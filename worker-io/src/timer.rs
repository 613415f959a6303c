//! The one timer the event loops wait on.

use std::future;
use std::time::Instant;

/// Sleeps until `deadline`, or forever without one. A deadline already past resolves at the
/// first poll (tokio's timer would wait for its next tick), so due work is never held back
/// behind input.
pub async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) if deadline <= Instant::now() => {}
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => future::pending().await,
    }
}
