//! A tenant's shared state: its quotas, what it holds against them now, and its request bucket.
//!
//! Every connection belongs to one tenant (its principal's); the connections, sessions and
//! requests in flight of all of a tenant's connections count against the tenant's quotas
//! (config `limits.tenant_*` and `tenants`). Reservations are exact: a count is raised before
//! the thing it counts exists and lowered if it does not come to be, so concurrent connections
//! cannot together pass a quota.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use codex_bus_config::TenantLimits;

use super::log_limit::LogLimit;
use codex_bus_protocol::{ErrorKind, TENANT_SEPARATOR};
use governor::{Quota as RateQuota, RateLimiter};

/// A GCRA token bucket on the monotonic clock, shared by the tenant's connections.
type Bucket = governor::DefaultDirectRateLimiter;

/// The wait suggested with a refusal that no clock can predict (a session or request leaving).
const SUGGESTED_WAIT: Duration = Duration::from_secs(1);

/// Which quota a refusal is about: the `data.quota` of a `quota_exceeded` reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Quota {
    /// Sessions in the sticky table.
    Sessions,
    /// Connections served at once.
    Connections,
    /// Requests in flight at workers.
    InFlight,
    /// Tenants known at once (`limits.max_tenants`), a global limit.
    Tenants,
}

impl Quota {
    /// The name sent as `data.quota` and used in logs and the audit trail.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Quota::Sessions => "sessions",
            Quota::Connections => "connections",
            Quota::InFlight => "in_flight",
            Quota::Tenants => "tenants",
        }
    }
}

/// Why a tenant's request, session or connection was refused, and when to retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The request bucket is empty until `retry_after` has passed (`rate_limited`).
    Rate { retry_after: Duration },
    /// A quota is reached (`quota_exceeded`); `retry_after` is a suggestion.
    Quota { quota: Quota, limit: usize },
}

impl Refused {
    /// The error kind of the reply.
    pub(crate) fn kind(self) -> ErrorKind {
        match self {
            Refused::Rate { .. } => ErrorKind::RateLimited,
            Refused::Quota { .. } => ErrorKind::QuotaExceeded,
        }
    }

    /// The retry hint, in milliseconds, rounded up so a retry after it is not early.
    pub(crate) fn retry_after_ms(self) -> u64 {
        let wait = match self {
            Refused::Rate { retry_after } => retry_after,
            Refused::Quota { .. } => SUGGESTED_WAIT,
        };
        u64::try_from(wait.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
    }

    /// The quota reached, if it is one.
    pub(crate) fn quota(self) -> Option<Quota> {
        match self {
            Refused::Quota { quota, .. } => Some(quota),
            Refused::Rate { .. } => None,
        }
    }
}

/// One tenant: the unit that owns sessions and is bounded by quotas.
pub(crate) struct Tenant {
    /// The tenant's name (a valid tenant name: see `codex_bus_config::is_tenant_name`).
    pub name: Arc<str>,
    /// The metric label of its series: its name if configured, else `(other)` (bounded cardinality).
    pub label: Arc<str>,
    /// `<name>:`, the prefix of its session ids as workers see them when sessions are namespaced.
    pub prefix: Box<[u8]>,
    limits: TenantLimits,
    sessions: AtomicUsize,
    connections: AtomicUsize,
    in_flight: AtomicUsize,
    /// Requests received from the tenant's connections, admitted or not, counted with the other
    /// tenants of its metric label (the counter is the label's, shared: a tenant that comes and
    /// goes leaves its count behind). Read by the dashboard's sampler (`admin::rates`).
    requests: Arc<AtomicU64>,
    bucket: Option<Bucket>,
    /// Keeps the tenant's refusals from flooding the audit trail: one line a second.
    pub audit_limit: LogLimit,
    /// The same for its messages that claim a tenant.
    pub claim_limit: LogLimit,
}

impl std::fmt::Debug for Tenant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "tenant {}", self.name)
    }
}

impl Tenant {
    /// A tenant holding nothing yet, counting its requests in `requests` (its label's counter).
    pub(crate) fn new(
        name: &str,
        label: &str,
        limits: TenantLimits,
        requests: Arc<AtomicU64>,
    ) -> Self {
        let bucket = NonZeroU32::new(limits.requests_per_sec).map(|rate| {
            let burst = NonZeroU32::new(limits.request_burst).unwrap_or(rate);
            RateLimiter::direct(RateQuota::per_second(rate).allow_burst(burst))
        });
        let mut prefix = name.as_bytes().to_vec();
        prefix.push(TENANT_SEPARATOR);
        Tenant {
            name: name.into(),
            label: label.into(),
            prefix: prefix.into(),
            limits,
            sessions: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            requests,
            bucket,
            audit_limit: LogLimit::default(),
            claim_limit: LogLimit::default(),
        }
    }

    /// The tenant's quotas.
    pub(crate) fn limits(&self) -> &TenantLimits {
        &self.limits
    }

    /// Sessions, connections and requests in flight held now.
    pub(crate) fn holding(&self) -> (usize, usize, usize) {
        (
            self.sessions.load(Ordering::Relaxed),
            self.connections.load(Ordering::Relaxed),
            self.in_flight.load(Ordering::Relaxed),
        )
    }

    /// Reserves one connection; release it with [`Tenant::connection_closed`].
    pub(crate) fn reserve_connection(&self) -> Result<(), Refused> {
        reserve(
            &self.connections,
            self.limits.max_connections,
            Quota::Connections,
        )
    }

    /// Releases a connection.
    pub(crate) fn connection_closed(&self) {
        self.connections.fetch_sub(1, Ordering::Relaxed);
    }

    /// Reserves one session; release it with [`Tenant::session_gone`].
    pub(crate) fn reserve_session(&self) -> Result<(), Refused> {
        reserve(&self.sessions, self.limits.max_sessions, Quota::Sessions)
    }

    /// Releases a session (expired, or its placement failed).
    pub(crate) fn session_gone(&self) {
        self.sessions.fetch_sub(1, Ordering::Relaxed);
    }

    /// Counts one request, then admits it: a token from the bucket, then a place among the
    /// requests in flight; release the place with [`Tenant::request_finished`]. A request refused
    /// for being over the in-flight quota has still spent its token: it was an attempt at the rate.
    pub(crate) fn reserve_request(&self) -> Result<(), Refused> {
        // The dashboard's request rate: the one relaxed add a request costs it (issue 14).
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.take_token()?;
        reserve(&self.in_flight, self.limits.max_in_flight, Quota::InFlight)
    }

    /// Takes one token from the request bucket: for a request, and for any message that starts
    /// a session (a notification would otherwise fill the session table at any rate).
    pub(crate) fn take_token(&self) -> Result<(), Refused> {
        let Some(bucket) = &self.bucket else {
            return Ok(());
        };
        bucket.check().map_err(|not_until| {
            let now = governor::clock::Clock::now(bucket.clock());
            Refused::Rate {
                retry_after: not_until.wait_time_from(now),
            }
        })
    }

    /// Releases a request's place (answered, failed, or never queued).
    pub(crate) fn request_finished(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Raises `count` by one unless that would pass `limit`.
fn reserve(count: &AtomicUsize, limit: usize, quota: Quota) -> Result<(), Refused> {
    if count.fetch_add(1, Ordering::Relaxed) >= limit {
        count.fetch_sub(1, Ordering::Relaxed);
        return Err(Refused::Quota { quota, limit });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rate: u32, burst: u32) -> TenantLimits {
        TenantLimits {
            max_sessions: 2,
            max_connections: 1,
            max_in_flight: 3,
            requests_per_sec: rate,
            request_burst: burst,
        }
    }

    #[test]
    fn quotas_are_exact_and_released() {
        let t = Tenant::new("a", "a", limits(0, 0), Default::default());
        assert_eq!(&*t.prefix, b"a:");
        t.reserve_connection().unwrap();
        let refused = t.reserve_connection().unwrap_err();
        assert_eq!(refused.quota(), Some(Quota::Connections));
        assert_eq!(refused.kind(), ErrorKind::QuotaExceeded);
        assert_eq!(refused.retry_after_ms(), 1000);
        t.connection_closed();
        t.reserve_connection().unwrap();
        t.reserve_session().unwrap();
        t.reserve_session().unwrap();
        assert!(t.reserve_session().is_err());
        for _ in 0..3 {
            t.reserve_request().unwrap();
        }
        assert_eq!(
            t.reserve_request(),
            Err(Refused::Quota {
                quota: Quota::InFlight,
                limit: 3
            })
        );
        t.request_finished();
        t.reserve_request().unwrap();
        assert_eq!(t.holding(), (2, 1, 3));
    }

    #[test]
    fn the_bucket_admits_its_burst_then_says_when() {
        let t = Tenant::new("a", "a", limits(2, 0), Default::default());
        t.reserve_request().unwrap();
        t.reserve_request().unwrap();
        let refused = t.reserve_request().unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::RateLimited);
        let ms = refused.retry_after_ms();
        assert!((1..=500).contains(&ms), "one token per 500 ms: {ms}");
        t.request_finished();
        assert!(
            t.reserve_request().is_err(),
            "a finished request returns no token"
        );
    }
}
