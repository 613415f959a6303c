//! `--auth`: the bus runs with authentication on, so its per-message cost (the tenant member and
//! the `<tenant>:` session prefix the router writes into every client message) is in the
//! figures. bus-bench makes up one capability token per invocation, names its digest in the
//! config's `auth` section (docs/config.md "auth"), and authenticates every TCP connection with it
//! before the warm-up, so the handshake is never timed. Unix-socket and stdio connections get
//! their principal without a handshake (peer credentials; `auth.stdio_tenant`).

use std::io::{Read, Write};

use sha2::{Digest, Sha256};

/// The tenant of every bench connection made with the token (Unix-socket connections are the
/// peer uid's tenant, `uid-<uid>`; stdio is `local`).
pub const TENANT: &str = "bench";

/// Bytes of randomness in a token (hex-encoded: twice as many characters).
const TOKEN_BYTES: usize = 32;

/// Longest `bus/authenticate` reply read before giving up (the daemon's is under 100 bytes).
const MAX_REPLY: usize = 4096;

/// A capability token made up for one bus-bench invocation.
#[derive(Clone)]
pub struct Credential {
    token: String,
}

impl Credential {
    /// A fresh token: [`TOKEN_BYTES`] bytes from `/dev/urandom`, hex-encoded. An error if that
    /// cannot be read.
    pub fn generate() -> Result<Credential, String> {
        let mut bytes = [0u8; TOKEN_BYTES];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .map_err(|e| format!("token: /dev/urandom: {e}"))?;
        Ok(Credential { token: hex(&bytes) })
    }

    /// The token itself, as a WebSocket client presents it (`Authorization: Bearer`).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The config's `auth` section: the token's SHA-256 for tenant [`TENANT`].
    pub fn config(&self) -> serde_json::Value {
        let digest = hex(&Sha256::digest(self.token.as_bytes()));
        serde_json::json!({
            "tokens": [{"tenant": TENANT, "sha256": digest, "subject": "bus-bench"}]
        })
    }

    /// Sends `bus/authenticate` on a blocking `stream` and reads its reply, which must be a
    /// result naming [`TENANT`] (docs/protocol.md "Authentication"). Nothing else is sent before
    /// it, so the reply is the first and only line the daemon has written.
    pub fn authenticate(&self, stream: &mut (impl Read + Write)) -> std::io::Result<()> {
        let request = serde_json::json!({
            "jsonrpc": "2.0",
            "id": "auth",
            "method": "bus/authenticate",
            "params": {"token": self.token},
        });
        let mut line = request.to_string().into_bytes();
        line.push(b'\n');
        stream.write_all(&line)?;
        let mut reply = Vec::new();
        let mut buf = [0u8; 512];
        while !reply.contains(&b'\n') {
            let n = stream.read(&mut buf)?;
            if n == 0 || reply.len() + n > MAX_REPLY {
                return Err(refused("no complete reply"));
            }
            reply.extend_from_slice(&buf[..n]);
        }
        let reply: serde_json::Value =
            serde_json::from_slice(&reply).map_err(|_| refused("a reply that is not JSON"))?;
        if reply["result"]["tenant"] != TENANT {
            return Err(refused(&reply.to_string()));
        }
        Ok(())
    }
}

fn refused(what: &str) -> std::io::Error {
    std::io::Error::other(format!("bus/authenticate: {what}"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_names_the_tokens_digest_never_the_token() {
        let credential = Credential::generate().unwrap();
        assert_eq!(credential.token.len(), 2 * TOKEN_BYTES);
        assert_ne!(credential.token, Credential::generate().unwrap().token);
        let config = credential.config();
        let entry = &config["tokens"][0];
        assert_eq!(entry["tenant"], TENANT);
        let digest = entry["sha256"].as_str().unwrap();
        assert_eq!(digest.len(), 64);
        assert!(!config.to_string().contains(&credential.token));
        // sha256("abc"), the FIPS 180-2 example.
        let abc = Credential {
            token: "abc".into(),
        };
        assert_eq!(
            abc.config()["tokens"][0]["sha256"],
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
