//! HS256 JWTs, verified as Codex's `--ws-auth signed-bearer-token` does
//! (../shared/reference/codex-remote.md, "Auth"): HS256 only (`none` and every other algorithm
//! refused), `exp` required, 30 s of clock skew on `exp` and `nbf`, `iss` and `aud` checked only
//! when configured (`aud` may be an array that holds the value), a secret of at least 32 bytes.
//! The subject is `sub`; the tenant is the configured claim, checked as a tenant name.

use std::fmt;

use codex_bus_config::{validate_tenant_name, JwtConfig};
use jsonwebtoken::errors::ErrorKind as JwtError;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use super::{Identity, Refusal};

/// Clock skew allowed on `exp` and `nbf`, in seconds (Codex's default).
pub(crate) const LEEWAY_SEC: u64 = 30;

/// Shortest secret accepted, in bytes (after trimming), as Codex requires: an HMAC key shorter
/// than the hash's output weakens it.
pub(crate) const MIN_SECRET_BYTES: usize = 32;

/// Longest `sub` accepted, in bytes: it goes into log lines.
const MAX_SUBJECT_BYTES: usize = 256;

/// Whether `credential` has a JWT's shape (three dot-separated parts), so a token that is not
/// configured is not reported as a broken JWT.
pub(crate) fn looks_like_jwt(credential: &str) -> bool {
    credential.bytes().filter(|&b| b == b'.').count() == 2
}

/// Whether `c` is an invisible formatting character (bidirectional overrides and isolates,
/// zero-width characters, the BOM): in a subject they would let a log or audit line display
/// another name than the one it holds ("adm\u{202e}nim").
fn is_invisible_format(c: char) -> bool {
    matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}')
}

/// Verifies HS256 JWTs with one secret.
pub(crate) struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
    tenant_claim: String,
}

impl JwtVerifier {
    /// Reads the secret file and prepares the checks `config` asks for.
    ///
    /// # Errors
    ///
    /// The file cannot be read, or holds fewer than [`MIN_SECRET_BYTES`] bytes once trimmed. The
    /// message names the file and the length, never the content.
    pub(crate) fn load(config: &JwtConfig) -> Result<Self, String> {
        let path = config.secret_file.display();
        let bytes = std::fs::read(&config.secret_file)
            .map_err(|e| format!("auth.jwt.secret_file: cannot read '{path}': {e}"))?;
        let secret = bytes.trim_ascii();
        if secret.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "auth.jwt.secret_file: '{path}' holds {} bytes (surrounding whitespace trimmed); \
                 the JWT secret must be at least {MIN_SECRET_BYTES} bytes",
                secret.len()
            ));
        }
        Ok(Self::new(secret, config))
    }

    /// A verifier of `secret` (already checked for length) with `config`'s claims.
    fn new(secret: &[u8], config: &JwtConfig) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SEC;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        if let Some(issuer) = &config.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        match &config.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            // Codex ignores `aud` when none is configured; the crate would refuse any.
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        JwtVerifier {
            key: DecodingKey::from_secret(secret),
            validation,
            tenant_claim: config.tenant_claim.clone(),
        }
    }

    /// Verifies `jwt` and returns whom it names.
    pub(crate) fn verify(&self, jwt: &str) -> Result<Identity, Refusal> {
        let claims = jsonwebtoken::decode::<serde_json::Map<String, Value>>(
            jwt,
            &self.key,
            &self.validation,
        )
        .map_err(|e| refusal(e.kind()))?
        .claims;
        let tenant = match claims.get(&self.tenant_claim) {
            Some(Value::String(tenant)) if validate_tenant_name(tenant).is_ok() => tenant,
            _ => return Err(Refusal::BadTenant),
        };
        let subject = match claims.get("sub") {
            None => tenant,
            Some(Value::String(sub))
                if !sub.is_empty()
                    && sub.len() <= MAX_SUBJECT_BYTES
                    && !sub
                        .chars()
                        .any(|c| c.is_control() || is_invisible_format(c)) =>
            {
                sub
            }
            Some(_) => return Err(Refusal::BadSubject),
        };
        Ok(Identity {
            tenant: tenant.as_str().into(),
            subject: subject.as_str().into(),
            method: "jwt",
        })
    }
}

/// Maps the crate's error to a refusal; its own messages are never shown (a claim-format error
/// may quote a claim's value).
fn refusal(kind: &JwtError) -> Refusal {
    match kind {
        JwtError::ExpiredSignature => Refusal::Expired,
        JwtError::ImmatureSignature => Refusal::NotYetValid,
        JwtError::InvalidSignature => Refusal::BadSignature,
        JwtError::InvalidIssuer => Refusal::IssuerMismatch,
        JwtError::InvalidAudience => Refusal::AudienceMismatch,
        JwtError::MissingRequiredClaim(claim) if claim == "iss" => Refusal::IssuerMismatch,
        JwtError::MissingRequiredClaim(claim) if claim == "aud" => Refusal::AudienceMismatch,
        _ => Refusal::InvalidJwt,
    }
}

impl fmt::Debug for JwtVerifier {
    /// The key is the secret: never printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("tenant_claim", &self.tenant_claim)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;
    use std::time::{SystemTime, UNIX_EPOCH};

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test";

    fn now() -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    fn config(issuer: Option<&str>, audience: Option<&str>) -> JwtConfig {
        JwtConfig {
            secret_file: "unused".into(),
            issuer: issuer.map(Into::into),
            audience: audience.map(Into::into),
            tenant_claim: "tenant".into(),
        }
    }

    fn sign(alg: Algorithm, secret: &[u8], claims: &Value) -> String {
        encode(&Header::new(alg), claims, &EncodingKey::from_secret(secret)).unwrap()
    }

    fn verify(verifier: &JwtVerifier, claims: Value) -> Result<Identity, Refusal> {
        verifier.verify(&sign(Algorithm::HS256, SECRET, &claims))
    }

    #[test]
    fn a_good_token_names_its_tenant_and_subject() {
        let v = JwtVerifier::new(SECRET, &config(None, None));
        let id = verify(
            &v,
            json!({"exp": now() + 60, "tenant": "acme", "sub": "alice"}),
        )
        .unwrap();
        assert_eq!((&*id.tenant, &*id.subject), ("acme", "alice"));
        let id = verify(&v, json!({"exp": now() + 60, "tenant": "acme", "aud": "x"})).unwrap();
        assert_eq!(
            &*id.subject, "acme",
            "no sub: the tenant; aud ignored when not configured"
        );
    }

    #[test]
    fn time_claims_have_thirty_seconds_of_skew() {
        let v = JwtVerifier::new(SECRET, &config(None, None));
        let t = now();
        assert!(verify(&v, json!({"exp": t - 10, "tenant": "a"})).is_ok());
        assert_eq!(
            verify(&v, json!({"exp": t - 60, "tenant": "a"})),
            Err(Refusal::Expired)
        );
        assert_eq!(verify(&v, json!({"tenant": "a"})), Err(Refusal::InvalidJwt));
        assert_eq!(
            verify(&v, json!({"exp": "soon", "tenant": "a"})),
            Err(Refusal::InvalidJwt)
        );
        assert!(verify(&v, json!({"exp": t + 60, "nbf": t + 10, "tenant": "a"})).is_ok());
        assert_eq!(
            verify(&v, json!({"exp": t + 600, "nbf": t + 300, "tenant": "a"})),
            Err(Refusal::NotYetValid)
        );
    }

    #[test]
    fn only_hs256_with_the_secret_verifies() {
        let v = JwtVerifier::new(SECRET, &config(None, None));
        let claims = json!({"exp": now() + 60, "tenant": "a"});
        let other = sign(
            Algorithm::HS256,
            b"another secret of thirty-two bytes!!",
            &claims,
        );
        assert_eq!(v.verify(&other), Err(Refusal::BadSignature));
        let hs384 = sign(Algorithm::HS384, SECRET, &claims);
        assert_eq!(v.verify(&hs384), Err(Refusal::InvalidJwt));
        // alg "none", unsigned.
        let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.", {
            let good = sign(Algorithm::HS256, SECRET, &claims);
            good.split('.').nth(1).unwrap().to_owned()
        });
        assert_eq!(v.verify(&none), Err(Refusal::InvalidJwt));
        assert_eq!(v.verify("a.b.c"), Err(Refusal::InvalidJwt));
    }

    #[test]
    fn issuer_audience_and_tenant_are_checked_when_configured() {
        let v = JwtVerifier::new(SECRET, &config(Some("idp"), Some("bus")));
        let t = now() + 60;
        let ok = json!({"exp": t, "tenant": "a", "iss": "idp", "aud": ["x", "bus"]});
        assert!(verify(&v, ok).is_ok());
        let cases = [
            (
                json!({"exp": t, "tenant": "a", "aud": "bus"}),
                Refusal::IssuerMismatch,
            ),
            (
                json!({"exp": t, "tenant": "a", "iss": "evil", "aud": "bus"}),
                Refusal::IssuerMismatch,
            ),
            (
                json!({"exp": t, "tenant": "a", "iss": "idp"}),
                Refusal::AudienceMismatch,
            ),
            (
                json!({"exp": t, "tenant": "a", "iss": "idp", "aud": "web"}),
                Refusal::AudienceMismatch,
            ),
            (
                json!({"exp": t, "iss": "idp", "aud": "bus"}),
                Refusal::BadTenant,
            ),
            (
                json!({"exp": t, "tenant": "a b", "iss": "idp", "aud": "bus"}),
                Refusal::BadTenant,
            ),
            (
                json!({"exp": t, "tenant": 7, "iss": "idp", "aud": "bus"}),
                Refusal::BadTenant,
            ),
            (
                json!({"exp": t, "tenant": "a", "sub": "x\ny", "iss": "idp", "aud": "bus"}),
                Refusal::BadSubject,
            ),
            (
                json!({"exp": t, "tenant": "a", "sub": "adm\u{202e}nim", "iss": "idp", "aud": "bus"}),
                Refusal::BadSubject,
            ),
        ];
        for (claims, refusal) in cases {
            assert_eq!(verify(&v, claims.clone()), Err(refusal), "{claims}");
        }
    }

    #[test]
    fn a_short_secret_is_refused_at_load_without_printing_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "short-secret-value\n").unwrap();
        let mut cfg = config(None, None);
        cfg.secret_file = path;
        let error = JwtVerifier::load(&cfg).err().unwrap();
        assert!(error.contains("holds 18 bytes"), "{error}");
        assert!(error.contains("at least 32 bytes"), "{error}");
        assert!(!error.contains("short-secret-value"), "{error}");
        let v = JwtVerifier::new(SECRET, &cfg);
        assert!(!format!("{v:?}").contains("0123456789"));
    }
}
