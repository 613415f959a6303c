//! What one run sends: connections, window, request count, sessions and payload size.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// How requests carry a `sessionId`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Sessions {
    /// No `sessionId`: the bus places each request on the least-loaded worker.
    None,
    /// One session per connection.
    PerConnection,
    /// Every request opens a session of its own, never reused (the session-table growth test).
    Unique,
    /// This many sessions, assigned round-robin over all requests.
    Count(u64),
}

impl FromStr for Sessions {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Sessions::None),
            "per-connection" => Ok(Sessions::PerConnection),
            "unique" => Ok(Sessions::Unique),
            n => match n.parse::<u64>() {
                Ok(0) | Err(_) => Err(format!(
                    "sessions must be none, per-connection, unique or a positive number, not {n:?}"
                )),
                Ok(count) => Ok(Sessions::Count(count)),
            },
        }
    }
}

impl fmt::Display for Sessions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sessions::None => f.write_str("none"),
            Sessions::PerConnection => f.write_str("per-connection"),
            Sessions::Unique => f.write_str("unique"),
            Sessions::Count(n) => write!(f, "{n}"),
        }
    }
}

/// The traffic of one run.
#[derive(Clone, Debug, Serialize)]
pub struct Load {
    /// Concurrent client connections.
    pub connections: usize,
    /// Requests in flight (sent, not yet answered) per connection at most.
    pub window: usize,
    /// Requests in total, spread round-robin over the connections.
    pub requests: usize,
    /// Session assignment.
    pub sessions: Sessions,
    /// Minimum request line length in bytes (padding goes into `params`); 0 = unpadded (~60 bytes).
    pub payload: usize,
    /// JSON-RPC method of every request.
    pub method: String,
}

impl Load {
    /// How many of the requests go to connection `conn` (requests are dealt out like cards).
    pub fn requests_on(&self, conn: usize) -> usize {
        self.requests / self.connections + usize::from(conn < self.requests % self.connections)
    }

    /// The same load with another request count (a warm-up).
    pub fn with_requests(&self, requests: usize) -> Load {
        Load {
            requests,
            ..self.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_parse_and_print_back() {
        for text in ["none", "per-connection", "unique", "42"] {
            assert_eq!(text.parse::<Sessions>().unwrap().to_string(), text);
        }
        assert!("0".parse::<Sessions>().is_err());
        assert!("some".parse::<Sessions>().is_err());
    }

    #[test]
    fn requests_are_dealt_over_connections_without_remainder_lost() {
        let load = Load {
            connections: 3,
            window: 1,
            requests: 10,
            sessions: Sessions::None,
            payload: 0,
            method: "ping".into(),
        };
        let per: Vec<usize> = (0..3).map(|c| load.requests_on(c)).collect();
        assert_eq!(per, [4, 3, 3]);
    }
}
