//! Tenant names: the one rule for every place a tenant is named, in the config (`auth.tokens[]`,
//! `auth.unix_tenants`, `auth.stdio_tenant`) and at run time (a JWT's tenant claim).

/// Longest tenant name, in bytes: long enough for a customer id or a UUID with a prefix, short
/// enough to sit in every log line and session key of the tenant.
pub const MAX_TENANT_BYTES: usize = 64;

/// Checks that `name` is a tenant name: 1 to [`MAX_TENANT_BYTES`] bytes of ASCII letters,
/// digits, `.`, `_` and `-`. The set keeps a tenant safe to print in logs, to use as a metric
/// label and to prefix a session id with, whatever issued it.
///
/// # Errors
///
/// A message saying which rule `name` breaks, without repeating `name` (it may come from an
/// untrusted credential).
pub fn validate_tenant_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a tenant name must not be empty".to_owned());
    }
    if name.len() > MAX_TENANT_BYTES {
        return Err(format!(
            "a tenant name is at most {MAX_TENANT_BYTES} bytes, got {}",
            name.len()
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err("a tenant name may hold only A-Z, a-z, 0-9, '.', '_' and '-'".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_set_and_nothing_else() {
        for good in ["a", "tenant-1", "Acme_Corp.eu", &"x".repeat(64)] {
            assert_eq!(validate_tenant_name(good), Ok(()), "{good}");
        }
        for bad in ["", "a b", "a/b", "é", "a\n", &"x".repeat(65), "a:b"] {
            assert!(validate_tenant_name(bad).is_err(), "{bad:?}");
        }
    }
}
