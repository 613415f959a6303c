//! The `auth` object (our extension): credentials, tenants of local clients, and the handshake's
//! bounds. Files it names (`tokens_file`, `jwt.secret_file`) are read by the daemon at start.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::path::FieldPath;
use crate::schema::{AUTH_KEYS, JWT_KEYS, TOKEN_KEYS};
use crate::tenant::validate_tenant_name;
use crate::tree::Json;
use crate::validate::problems::Problems;
use crate::validate::values::{boolean, integer, non_empty_string, object, string, DAY_SEC};
use crate::{AuthConfig, JwtConfig, TokenEntry, TokenSecret};

/// Most lines a client may have refused before it authenticates; more would only let a client
/// that will never authenticate hold its connection longer.
const MAX_UNAUTHENTICATED_LINES: u32 = 100;

/// Validates `auth`; `Some(None)` when it is absent.
pub(crate) fn auth(
    path: &FieldPath<'_>,
    value: Option<&Json>,
    problems: &mut Problems,
) -> Option<Option<AuthConfig>> {
    let Some(value) = value else {
        return Some(None);
    };
    let entries = object(path, value, problems)?;
    let before = problems.count();
    let mut auth = AuthConfig::default();
    for (key, value) in entries {
        let path = path.key(key);
        match key.as_str() {
            "tokens" => {
                if let Some(tokens) = tokens(&path, value, problems) {
                    auth.tokens = tokens;
                }
            }
            "tokens_file" => {
                auth.tokens_file = non_empty_string(&path, value, problems).map(PathBuf::from)
            }
            "jwt" => auth.jwt = jwt(&path, value, problems),
            "unix_tenants" => {
                if let Some(map) = unix_tenants(&path, value, problems) {
                    auth.unix_tenants = map;
                }
            }
            "stdio_tenant" => {
                if let Some(tenant) = tenant(&path, value, problems) {
                    auth.stdio_tenant = tenant;
                }
            }
            "insecure_no_auth" => {
                if let Some(b) = boolean(&path, value, problems) {
                    auth.insecure_no_auth = b;
                }
            }
            "handshake_timeout_sec" => {
                if let Some(n) = integer(&path, value, 1, DAY_SEC, problems) {
                    auth.handshake_timeout_sec = n;
                }
            }
            "max_unauthenticated_lines" => {
                if let Some(n) = integer(&path, value, 1, MAX_UNAUTHENTICATED_LINES, problems) {
                    auth.max_unauthenticated_lines = n;
                }
            }
            _ => problems.unknown_key(&path, key, AUTH_KEYS),
        }
    }
    (problems.count() == before).then_some(Some(auth))
}

/// Validates an array of token entries: `auth.tokens`, or the whole of a tokens file.
pub(crate) fn tokens(
    path: &FieldPath<'_>,
    value: &Json,
    problems: &mut Problems,
) -> Option<Vec<TokenEntry>> {
    let Json::Array(items) = value else {
        problems.add(
            path,
            format_args!(
                "must be an array of token objects, got {}",
                value.describe()
            ),
        );
        return None;
    };
    let before = problems.count();
    let mut tokens = Vec::with_capacity(items.len());
    let mut first_index_of: BTreeMap<String, usize> = BTreeMap::new();
    for (index, item) in items.iter().enumerate() {
        let path = path.index(index);
        let Some(entry) = token(&path, item, problems) else {
            continue;
        };
        // Two files may hold one token: the daemon compares their digests once it has read them.
        if let TokenSecret::Sha256(digest) = &entry.secret {
            if let Some(first) = first_index_of.get(digest.as_str()) {
                problems.add(
                    &path.key("sha256"),
                    format_args!("the same token as entry [{first}]"),
                );
                continue;
            }
            first_index_of.insert(digest.clone(), index);
        }
        tokens.push(entry);
    }
    (problems.count() == before).then_some(tokens)
}

/// One token entry.
fn token(path: &FieldPath<'_>, value: &Json, problems: &mut Problems) -> Option<TokenEntry> {
    let entries = object(path, value, problems)?;
    let before = problems.count();
    let (mut tenant_name, mut secret, mut subject) = (None, None, None);
    for (key, value) in entries {
        let path = path.key(key);
        match key.as_str() {
            "tenant" => tenant_name = tenant(&path, value, problems),
            "sha256" => secret = sha256_hex(&path, value, problems).map(TokenSecret::Sha256),
            "token_file" => {
                secret = non_empty_string(&path, value, problems)
                    .map(|file| TokenSecret::TokenFile(PathBuf::from(file)))
            }
            "subject" => subject = non_empty_string(&path, value, problems).map(str::to_owned),
            _ => problems.unknown_key(&path, key, TOKEN_KEYS),
        }
    }
    if tenant_name.is_none() && value.get("tenant").is_none() {
        problems.add(&path.key("tenant"), "missing; every token needs it");
    }
    match (value.get("sha256"), value.get("token_file")) {
        (None, None) => problems.add(
            &path.key("sha256"),
            "missing; every token needs its sha256 or a token_file",
        ),
        (Some(_), Some(_)) => problems.add(
            &path.key("token_file"),
            "a token has a sha256 or a token_file, not both",
        ),
        _ => {}
    }
    if problems.count() != before {
        return None;
    }
    Some(TokenEntry {
        tenant: tenant_name?,
        secret: secret?,
        subject,
    })
}

/// `auth.jwt`.
fn jwt(path: &FieldPath<'_>, value: &Json, problems: &mut Problems) -> Option<JwtConfig> {
    let entries = object(path, value, problems)?;
    let before = problems.count();
    let (mut secret_file, mut issuer, mut audience) = (None, None, None);
    let mut tenant_claim = "tenant".to_owned();
    for (key, value) in entries {
        let path = path.key(key);
        match key.as_str() {
            "secret_file" => {
                secret_file = non_empty_string(&path, value, problems).map(PathBuf::from)
            }
            "issuer" => issuer = non_empty_string(&path, value, problems).map(str::to_owned),
            "audience" => audience = non_empty_string(&path, value, problems).map(str::to_owned),
            "tenant_claim" => {
                if let Some(claim) = non_empty_string(&path, value, problems) {
                    tenant_claim = claim.to_owned();
                }
            }
            _ => problems.unknown_key(&path, key, JWT_KEYS),
        }
    }
    if secret_file.is_none() && value.get("secret_file").is_none() {
        problems.add(
            &path.key("secret_file"),
            "missing; a JWT is verified with the secret in this file",
        );
    }
    if problems.count() != before {
        return None;
    }
    Some(JwtConfig {
        secret_file: secret_file?,
        issuer,
        audience,
        tenant_claim,
    })
}

/// `auth.unix_tenants`: uid (a decimal string key) to tenant.
fn unix_tenants(
    path: &FieldPath<'_>,
    value: &Json,
    problems: &mut Problems,
) -> Option<BTreeMap<u32, String>> {
    let entries = object(path, value, problems)?;
    let before = problems.count();
    let mut map = BTreeMap::new();
    for (key, value) in entries {
        let path = path.key(key);
        // Digits only: `u32::from_str` would also take "+5", a second spelling of the same uid.
        let uid = key
            .bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| key.parse::<u32>().ok())
            .flatten();
        let tenant = tenant(&path, value, problems);
        match (uid, tenant) {
            (Some(uid), Some(tenant)) => {
                map.insert(uid, tenant);
            }
            (None, _) => problems.add(&path, "the key must be a numeric uid (0 to 4294967295)"),
            _ => {}
        }
    }
    (problems.count() == before).then_some(map)
}

/// A tenant name.
fn tenant(path: &FieldPath<'_>, value: &Json, problems: &mut Problems) -> Option<String> {
    let name = string(path, value, problems)?;
    match validate_tenant_name(name) {
        Ok(()) => Some(name.to_owned()),
        Err(why) => {
            problems.add(path, format_args!("{why}, got {}", value.describe()));
            None
        }
    }
}

/// The SHA-256 of nothing: what `printf %s "$TOKEN" | sha256sum` prints when `TOKEN` is unset.
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// A hex SHA-256 digest (64 digits, either case), returned in lower case; never the digest of the
/// empty string, which would let a client in with an empty token.
pub(crate) fn sha256_hex(
    path: &FieldPath<'_>,
    value: &Json,
    problems: &mut Problems,
) -> Option<String> {
    let hex = string(path, value, problems)?;
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        let hex = hex.to_ascii_lowercase();
        if hex == EMPTY_SHA256 {
            problems.add(
                path,
                "is the SHA-256 of an empty token (was the variable holding the token unset?)",
            );
            return None;
        }
        Some(hex)
    } else {
        // The value is a digest, not a secret, but a token pasted here by mistake would be one:
        // it is not echoed.
        problems.add(
            path,
            format_args!(
                "must be a 64-character hex SHA-256 digest (printf %s \"$TOKEN\" | sha256sum), got {} characters",
                hex.chars().count()
            ),
        );
        None
    }
}
