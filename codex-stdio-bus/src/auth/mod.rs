//! Authentication: who a client is, from the credential it presents (TCP), its peer credentials
//! (Unix socket) or the transport itself (stdio), as `auth` configures (docs/config.md, "auth").
//!
//! The two bearer modes are those of `codex app-server --ws-auth` (../shared/reference/
//! codex-remote.md, "Auth"), so one credential scheme serves the raw NDJSON listener here and the
//! WebSocket front later: capability tokens compared as SHA-256 digests in constant time
//! ([`token`]), and HS256 JWTs ([`jwt`]).
//!
//! Secrets (tokens, JWTs, the JWT secret) never leave this module's values: nothing here logs,
//! refusals carry a fixed reason, and the `Debug` impls print counts only.
//!
//! A reload replaces the credentials in force ([`Credentials`], [`AdminCredentials`]): a
//! connection authenticates with those in force when it presents its credential, and keeps the
//! principal it got once it has.
//!
//! A leaf: it imports nothing of the daemon (the config and the JWT crate only), so the I/O layer
//! (the handshake) and the admin endpoint (its bearer token) both use it.

pub(crate) mod jwt;
pub(crate) mod token;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use codex_bus_config::{AuthConfig, Config};

use jwt::JwtVerifier;
use token::{Digest, TokenTable};

/// Who a verified credential belongs to: the parts of a connection's principal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Identity {
    /// The tenant, a valid tenant name.
    pub tenant: Arc<str>,
    /// Who, within the tenant (a token's subject, a JWT's `sub`, a uid, the transport).
    pub subject: Arc<str>,
    /// How it was established, for the audit trail: `token`, `jwt`, `peer_credentials` or
    /// `local` (stdio).
    pub method: &'static str,
}

/// Why a credential was refused. Its [`Refusal::reason`] is what the client and the log are told;
/// it never holds any part of the credential.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Not a configured token, and not a JWT (or no JWT secret is configured).
    UnknownToken,
    /// A JWT that cannot be parsed, has another algorithm than HS256, lacks `exp`, or has a
    /// claim of the wrong type.
    InvalidJwt,
    /// A JWT whose signature does not verify with the configured secret.
    BadSignature,
    /// A JWT past `exp` plus the clock skew.
    Expired,
    /// A JWT before `nbf` minus the clock skew.
    NotYetValid,
    /// A JWT without the configured `iss`.
    IssuerMismatch,
    /// A JWT without the configured `aud`.
    AudienceMismatch,
    /// A JWT whose tenant claim is missing or not a tenant name.
    BadTenant,
    /// A JWT whose `sub` is not a printable string of at most 256 bytes.
    BadSubject,
}

impl Refusal {
    /// A short phrase for the error reply's detail and the log line.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Refusal::UnknownToken => "unknown token",
            Refusal::InvalidJwt => "invalid jwt",
            Refusal::BadSignature => "jwt signature does not verify",
            Refusal::Expired => "expired jwt",
            Refusal::NotYetValid => "jwt is not valid yet",
            Refusal::IssuerMismatch => "jwt issuer mismatch",
            Refusal::AudienceMismatch => "jwt audience mismatch",
            Refusal::BadTenant => "jwt tenant claim missing or not a tenant name",
            Refusal::BadSubject => "jwt sub is not a printable string of at most 256 bytes",
        }
    }
}

/// The verifier built from `auth` at start: every file it names is read and checked then.
pub(crate) struct Authenticator {
    tokens: TokenTable,
    jwt: Option<JwtVerifier>,
    unix_tenants: BTreeMap<u32, Arc<str>>,
    stdio: Identity,
    /// `auth.handshake_timeout_sec`.
    pub handshake_timeout: Duration,
    /// `auth.max_unauthenticated_lines`.
    pub max_unauthenticated_lines: u32,
}

impl Authenticator {
    /// Builds the verifier: reads `tokens_file` and the JWT secret file.
    ///
    /// # Errors
    ///
    /// A message naming the field and the file, for an unreadable or invalid tokens file, the
    /// same token twice, or an unreadable or short (under 32 bytes) JWT secret. The message never
    /// holds a secret.
    pub(crate) fn load(config: &AuthConfig) -> Result<Self, String> {
        let mut entries = config.tokens.clone();
        if let Some(path) = &config.tokens_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("auth.tokens_file: cannot read '{}': {e}", path.display()))?;
            let source = format!("auth.tokens_file '{}'", path.display());
            entries
                .extend(Config::tokens_from_json_str(&text, &source).map_err(|e| e.to_string())?);
        }
        let tokens = TokenTable::new(&entries)?;
        let jwt = config.jwt.as_ref().map(JwtVerifier::load).transpose()?;
        Ok(Authenticator {
            tokens,
            jwt,
            unix_tenants: config
                .unix_tenants
                .iter()
                .map(|(uid, tenant)| (*uid, Arc::from(tenant.as_str())))
                .collect(),
            stdio: Identity {
                tenant: config.stdio_tenant.as_str().into(),
                subject: "stdio".into(),
                method: "local",
            },
            handshake_timeout: Duration::from_secs(config.handshake_timeout_sec),
            max_unauthenticated_lines: config.max_unauthenticated_lines,
        })
    }

    /// Whether any bearer credential can succeed (a token or a JWT secret): a TCP listener with
    /// neither would refuse every client, a config mistake.
    pub(crate) fn accepts_bearers(&self) -> bool {
        !self.tokens.is_empty() || self.jwt.is_some()
    }

    /// Verifies a bearer credential: a capability token first (its digest, in constant time),
    /// then, if a JWT secret is configured and the credential has a JWT's shape, an HS256 JWT.
    pub(crate) fn verify(&self, credential: &str) -> Result<Identity, Refusal> {
        if let Some(identity) = self.tokens.find(credential) {
            return Ok(identity);
        }
        match &self.jwt {
            Some(jwt) if jwt::looks_like_jwt(credential) => jwt.verify(credential),
            _ => Err(Refusal::UnknownToken),
        }
    }

    /// The identity of a Unix-socket peer with `uid`: its mapped tenant, else `uid-<uid>`.
    pub(crate) fn unix(&self, uid: u32) -> Identity {
        let tenant = match self.unix_tenants.get(&uid) {
            Some(tenant) => tenant.clone(),
            None => format!("uid-{uid}").into(),
        };
        Identity {
            tenant,
            subject: format!("uid {uid}").into(),
            method: "peer_credentials",
        }
    }

    /// The identity of the stdio client: `auth.stdio_tenant`.
    pub(crate) fn stdio(&self) -> Identity {
        self.stdio.clone()
    }
}

impl fmt::Debug for Authenticator {
    /// Counts only: the table holds digests and the JWT key holds the secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("tokens", &self.tokens.len())
            .field("jwt", &self.jwt.is_some())
            .field("unix_tenants", &self.unix_tenants.len())
            .field("stdio_tenant", &self.stdio.tenant)
            .finish_non_exhaustive()
    }
}

/// A credential verifier that a reload can replace while connections use it: a lock-free read
/// per authentication, the swap atomic (a reader sees the old value or the new one, whole).
pub(crate) struct Replaceable<T>(ArcSwapOption<T>);

/// The client authenticator in force: `None` without `auth` (every connection is the default
/// tenant's). A reload never turns `auth` on or off (`reload::plan` refuses it), so it only ever
/// replaces one authenticator with another.
pub(crate) type Credentials = Replaceable<Authenticator>;

/// The admin endpoint's bearer in force (`metrics.bearer_sha256`): `None` leaves the endpoint
/// open (and refuses `POST /reload` and `POST /restart`, which need one).
pub(crate) type AdminCredentials = Replaceable<AdminBearer>;

impl<T> Replaceable<T> {
    /// Holding `initial`, the value built at start.
    pub(crate) fn new(initial: Option<Arc<T>>) -> Self {
        Replaceable(ArcSwapOption::new(initial))
    }

    /// The value in force now. A caller keeps the `Arc` for one decision (one handshake, one
    /// request): a replacement meanwhile applies from the next one.
    pub(crate) fn current(&self) -> Option<Arc<T>> {
        self.0.load_full()
    }

    /// Puts `next` in force for every later [`Replaceable::current`]; holders of the old value
    /// keep it until they drop it.
    pub(crate) fn replace(&self, next: Option<Arc<T>>) {
        self.0.store(next);
    }
}

impl<T: fmt::Debug> fmt::Debug for Replaceable<T> {
    /// As the value in force (whose own `Debug` prints no secret).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.load().fmt(f)
    }
}

/// The admin endpoint's bearer token (`metrics.bearer_sha256`), checked like a capability token.
pub(crate) struct AdminBearer(Digest);

impl AdminBearer {
    /// From the configured hex digest (64 hex digits, as the config checked).
    pub(crate) fn new(hex: &str) -> Option<Self> {
        Digest::from_hex(hex).map(AdminBearer)
    }

    /// The token `config` sets (`metrics.bearer_sha256`), if any: at start and on every reload.
    pub(crate) fn of(config: &Config) -> Option<Arc<Self>> {
        let hex = config.metrics.bearer_sha256.as_deref()?;
        AdminBearer::new(hex).map(Arc::new)
    }

    /// Whether an `Authorization` header value carries the token: `Bearer <token>` (the scheme
    /// name in any case, as Codex accepts it), or HTTP Basic (RFC 7617) with the token as the
    /// password and any user name, which is what a browser sends for a page and its
    /// `EventSource` once the operator has typed the token into its login prompt.
    pub(crate) fn admits(&self, authorization: &[u8]) -> bool {
        if let Some(credential) = authorization
            .split_at_checked(6)
            .and_then(|(scheme, rest)| scheme.eq_ignore_ascii_case(b"basic ").then_some(rest))
        {
            return basic_password(credential.trim_ascii())
                .is_some_and(|token| self.0.matches(&token));
        }
        self.admits_bearer(authorization)
    }

    /// Whether an `Authorization` header value is `Bearer <token>` with the token; HTTP Basic is
    /// not accepted. For requests that change something: a browser that has the token as a
    /// Basic password attaches it to any request to the endpoint, a cross-site form's POST
    /// included, while no other site can make it send a bearer header.
    pub(crate) fn admits_bearer(&self, authorization: &[u8]) -> bool {
        bearer_token(authorization).is_some_and(|token| self.0.matches(token))
    }
}

/// The token of an `Authorization` value `Bearer <token>`: the scheme in any case, the token
/// trimmed of ASCII whitespace, as Codex reads it (`Some(b"")` for an empty one); `None` for any
/// other form. The one reading of the header, for the admin endpoint and the WebSocket front.
pub(crate) fn bearer_token(authorization: &[u8]) -> Option<&[u8]> {
    let (scheme, token) = authorization.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| token.trim_ascii())
}

/// The password of an HTTP Basic credential (`base64(user ":" password)`), if it decodes.
fn basic_password(credential: &[u8]) -> Option<Vec<u8>> {
    use base64::Engine;
    let pair = base64::engine::general_purpose::STANDARD
        .decode(credential)
        .ok()?;
    let colon = pair.iter().position(|&b| b == b':')?;
    Some(pair[colon + 1..].to_vec())
}

impl fmt::Debug for AdminBearer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminBearer(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_token_is_admitted_as_bearer_or_as_a_basic_password() {
        use sha2::Digest as _;
        let hex: String = sha2::Sha256::digest(b"s3cret")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let bearer = AdminBearer::new(&hex).unwrap();
        assert!(bearer.admits(b"Bearer s3cret"));
        assert!(bearer.admits(b"bearer  s3cret "));
        assert!(!bearer.admits(b"Bearer s3cre"));
        // base64("operator:s3cret"), base64(":s3cret"), base64("operator:s3cre").
        assert!(bearer.admits(b"Basic b3BlcmF0b3I6czNjcmV0"));
        assert!(bearer.admits(b"basic OnMzY3JldA=="));
        assert!(!bearer.admits(b"Basic b3BlcmF0b3I6czNjcmU="));
        // No colon, not base64, the token as a user name, nothing.
        assert!(!bearer.admits(b"Basic czNjcmV0"));
        assert!(!bearer.admits(b"Basic s3cret"));
        assert!(!bearer.admits(b"Basic czNjcmV0Og=="));
        assert!(!bearer.admits(b"Basic "));
        assert!(!bearer.admits(b""));
    }

    #[test]
    fn replaced_credentials_apply_to_the_next_reader_only() {
        let digest = |token: &[u8]| -> String {
            use sha2::Digest as _;
            sha2::Sha256::digest(token)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        };
        let admin = AdminCredentials::new(AdminBearer::new(&digest(b"old")).map(Arc::new));
        let held = admin.current().unwrap();
        admin.replace(AdminBearer::new(&digest(b"new")).map(Arc::new));
        assert!(held.admits(b"Bearer old"), "a holder keeps what it loaded");
        let now = admin.current().unwrap();
        assert!(now.admits(b"Bearer new") && !now.admits(b"Bearer old"));
        admin.replace(None);
        assert!(admin.current().is_none());

        let config = |tenant: &str| AuthConfig {
            tokens: vec![codex_bus_config::TokenEntry {
                tenant: tenant.to_owned(),
                secret: codex_bus_config::TokenSecret::Sha256(digest(b"t")),
                subject: None,
            }],
            ..AuthConfig::default()
        };
        let load = |tenant: &str| Some(Arc::new(Authenticator::load(&config(tenant)).unwrap()));
        let credentials = Credentials::new(load("acme"));
        let verify = |c: &Credentials| c.current().unwrap().verify("t").unwrap().tenant;
        assert_eq!(&*verify(&credentials), "acme");
        credentials.replace(load("globex"));
        assert_eq!(&*verify(&credentials), "globex");
    }
}
