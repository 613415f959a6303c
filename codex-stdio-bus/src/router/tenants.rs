//! The tenants the router knows: each configured one for the daemon's life, any other while it
//! holds a connection or a session, at most `limits.max_tenants` at once.
//!
//! Metric labels stay bounded the same way: a configured tenant's series carry its name, every
//! other tenant's are summed under `(other)` (docs/metrics.md, "Tenants").

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use codex_bus_config::{Config, TenantLimits};
use dashmap::DashMap;

use crate::core::principal::DEFAULT_TENANT;
use crate::core::tenant::{Quota, Refused, Tenant};
use crate::metrics;

/// The label of the tenants that are not configured.
/// Parenthesised: no tenant name holds a parenthesis, so no tenant can share its series.
pub(crate) const OTHER: &str = "(other)";

/// What one metric label's tenants hold together.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Holding {
    /// Sessions in the sticky table.
    pub sessions: usize,
    /// Connections served.
    pub connections: usize,
    /// Requests in flight at workers.
    pub in_flight: usize,
}

/// The tenant table.
pub(crate) struct Tenants {
    table: DashMap<Arc<str>, Arc<Tenant>>,
    /// Per-tenant limits of the configured tenants.
    configured: BTreeMap<String, TenantLimits>,
    /// The tenants the config names (in `tenants` and in `auth`) and the default tenant: known
    /// for good, each with its own metric label.
    labelled: BTreeSet<String>,
    /// The limits of a tenant that is not configured.
    defaults: TenantLimits,
    /// `limits.max_tenants`.
    max: usize,
    /// Requests received, by metric label (every label of `labelled`, then [`OTHER`]): each
    /// tenant counts into its label's ([`Tenant::reserve_request`]), so a count outlives the
    /// tenants that come and go under `(other)`.
    requests: Box<[(Arc<str>, Arc<AtomicU64>)]>,
}

impl Tenants {
    /// The table of `config`, holding its configured tenants.
    pub(crate) fn new(config: &Config) -> Self {
        let mut labelled: BTreeSet<String> = config.tenants.keys().cloned().collect();
        labelled.insert(DEFAULT_TENANT.to_owned());
        // The tenants the auth section names are configured too; a JWT's are not.
        if let Some(auth) = &config.auth {
            labelled.extend(auth.tokens.iter().map(|t| t.tenant.clone()));
            labelled.extend(auth.unix_tenants.values().cloned());
            labelled.insert(auth.stdio_tenant.clone());
        }
        let requests = labelled
            .iter()
            .map(String::as_str)
            .chain([OTHER])
            .map(|label| (Arc::from(label), Arc::default()))
            .collect();
        let tenants = Tenants {
            table: DashMap::new(),
            configured: config.tenants.clone(),
            labelled,
            defaults: config.limits.tenant_defaults(),
            max: config.limits.max_tenants,
            requests,
        };
        // Every named tenant is known from the start and for good, so tenants that come and go
        // (JWT claims) can never take the places of `limits.max_tenants` from them.
        for name in &tenants.labelled {
            let tenant = tenants.make(name);
            tenants.table.insert(tenant.name.clone(), tenant);
        }
        for label in tenants.labelled.iter().map(String::as_str).chain([OTHER]) {
            metrics::get().tenant_label(label);
        }
        tenants
    }

    /// A new tenant `name` with its configured limits and label.
    fn make(&self, name: &str) -> Arc<Tenant> {
        let limits = self.configured.get(name).copied().unwrap_or(self.defaults);
        let label = if self.labelled.contains(name) {
            name
        } else {
            OTHER
        };
        let requests = self
            .requests
            .iter()
            .find(|(l, _)| &**l == label)
            .map(|(_, count)| count.clone())
            .expect("every label has a request counter");
        Arc::new(Tenant::new(name, label, limits, requests))
    }

    /// The tenant `name`, known from now on if it was not; refused when `limits.max_tenants`
    /// tenants are known. The refusal carries a tenant for the refused connection to belong to,
    /// known to no one else.
    pub(crate) fn get(&self, name: &str) -> Result<Arc<Tenant>, (Arc<Tenant>, Refused)> {
        if let Some(found) = self.table.get(name) {
            return Ok(found.clone());
        }
        let tenant = self.make(name);
        if self.table.len() >= self.max {
            let refused = Refused::Quota {
                quota: Quota::Tenants,
                limit: self.max,
            };
            return Err((tenant, refused));
        }
        Ok(self
            .table
            .entry(tenant.name.clone())
            .or_insert(tenant)
            .clone())
    }

    /// Forgets the tenants that are not named in the config and hold nothing: no connection,
    /// session or request refers to them (only the table does). Returns how many are left.
    pub(crate) fn prune(&self) -> usize {
        self.table.retain(|name, tenant| {
            self.labelled.contains(&**name) || Arc::strong_count(tenant) > 1
        });
        self.table.len()
    }

    /// What the tenants hold, summed by metric label; every labelled tenant appears, zeros too.
    pub(crate) fn holding(&self) -> BTreeMap<Arc<str>, Holding> {
        let mut by_label: BTreeMap<Arc<str>, Holding> = self
            .labelled
            .iter()
            .map(|name| (Arc::from(name.as_str()), Holding::default()))
            .collect();
        by_label.entry(OTHER.into()).or_default();
        for tenant in self.table.iter() {
            let (sessions, connections, in_flight) = tenant.holding();
            let sum = by_label.entry(tenant.label.clone()).or_default();
            sum.sessions += sessions;
            sum.connections += connections;
            sum.in_flight += in_flight;
        }
        by_label
    }

    /// Requests received so far by metric label, in a fixed order (the configured labels sorted,
    /// then `(other)`): the same labels for the daemon's life, so bounded like the metrics.
    pub(crate) fn requests(&self) -> impl Iterator<Item = (&str, u64)> {
        self.requests
            .iter()
            .map(|(label, count)| (&**label, count.load(Ordering::Relaxed)))
    }

    /// Tenants known now.
    pub(crate) fn count(&self) -> usize {
        self.table.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::from_json_str(text, "t").unwrap()
    }

    #[test]
    fn configured_tenants_have_their_limits_and_labels_and_stay() {
        let tenants = Tenants::new(&config(
            r#"{"pools":[{"id":"p","command":"cat","instances":1}],
                "limits":{"max_tenants":3,"tenant_max_sessions":5},
                "tenants":{"acme":{"max_sessions":9}}}"#,
        ));
        let acme = tenants.get("acme").unwrap();
        assert_eq!((acme.limits().max_sessions, &*acme.label), (9, "acme"));
        let jwt = tenants.get("from-a-jwt").unwrap();
        assert_eq!((jwt.limits().max_sessions, &*jwt.label), (5, OTHER));
        let default = tenants.get(DEFAULT_TENANT).unwrap();
        assert_eq!(&*default.label, DEFAULT_TENANT);
        let (_, refused) = tenants.get("fourth").unwrap_err();
        assert_eq!(refused.quota(), Some(Quota::Tenants));
        jwt.reserve_connection().unwrap();
        let holding = tenants.holding();
        assert_eq!(holding[OTHER].connections, 1);
        assert_eq!(holding["acme"], Holding::default());
        jwt.reserve_request().unwrap();
        acme.reserve_request().unwrap();
        acme.reserve_request().unwrap();
        let requests: Vec<_> = tenants.requests().collect();
        assert_eq!(requests, [("acme", 2), (DEFAULT_TENANT, 0), (OTHER, 1)]);
        drop((jwt, default));
        assert_eq!(tenants.prune(), 2, "the named tenants stay");
        let fourth = tenants.get("fourth").unwrap();
        fourth.reserve_request().unwrap();
        let other = tenants.requests().find(|(l, _)| *l == OTHER);
        assert_eq!(
            other,
            Some((OTHER, 2)),
            "a label's count outlives its tenants"
        );
        drop(fourth);
        drop(acme);
        assert_eq!(tenants.count(), 3);
    }

    #[test]
    fn tenants_named_by_auth_are_known_from_the_start_and_keep_their_places() {
        let digest = "0".repeat(64);
        let tenants = Tenants::new(&config(&format!(
            r#"{{"pools":[{{"id":"p","command":"cat","instances":1}}],
                "limits":{{"max_tenants":3}},
                "auth":{{"tokens":[{{"tenant":"tok","sha256":"{digest}"}}]}}}}"#
        )));
        // tok, default and the stdio tenant are known: one place is left for JWT tenants.
        assert_eq!(tenants.count(), 3);
        assert!(tenants.get("jwt-1").is_err());
        assert_eq!(&*tenants.get("tok").unwrap().label, "tok");
    }
}
