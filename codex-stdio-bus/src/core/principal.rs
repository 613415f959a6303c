//! Who a connection is: fixed when it connects, never taken from a message.

use std::fmt;
use std::sync::Arc;

/// The tenant every connection belongs to while no authentication is configured.
pub(crate) const DEFAULT_TENANT: &str = "default";

/// An authenticated identity: a tenant (who owns sessions) and a subject within it (who
/// connected). Without authentication every connection is the default tenant and its subject
/// names the transport it came in on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Principal {
    /// The tenant, the unit that owns sessions.
    pub tenant: Arc<str>,
    /// Who connected, within the tenant (e.g. a uid, a token's name).
    pub subject: Arc<str>,
}

impl Principal {
    /// The default tenant's principal for an unauthenticated connection over `transport`.
    pub(crate) fn anonymous(transport: &str) -> Self {
        Principal {
            tenant: DEFAULT_TENANT.into(),
            subject: transport.into(),
        }
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.tenant, self.subject)
    }
}
