//! Prebuilt request bytes: every line of a run is written before the clock starts, so sending is
//! one `write` of a slice and the generator is never the bottleneck.

use crate::ids::{self, Tag, MEASURED};
use crate::load::{Load, Sessions};

/// Room the padding member takes besides its content: `"pad":""`.
const PAD_OVERHEAD: usize = 8;

/// The requests of one connection, back to back.
pub struct Prebuilt {
    /// Every request line, each ending in `\n`.
    pub bytes: Vec<u8>,
    /// `ends[i]` is the offset just past request `i`'s newline.
    pub ends: Vec<usize>,
}

impl Prebuilt {
    /// Number of requests.
    pub fn len(&self) -> usize {
        self.ends.len()
    }
}

/// Builds every connection's requests for `load`, with ids tagged `tag`.
///
/// Request `i` of connection `c` is request number `i * connections + c` of the run, which is the
/// number session assignment counts with.
pub fn build(load: &Load, tag: Tag) -> Vec<Prebuilt> {
    let method = serde_json::to_string(&load.method).expect("a string serialises");
    (0..load.connections)
        .map(|conn| {
            let count = load.requests_on(conn);
            let mut bytes = Vec::with_capacity(count * (load.payload.max(64) + 48));
            let mut ends = Vec::with_capacity(count);
            for seq in 0..count {
                let number = (seq * load.connections + conn) as u64;
                let session = session_of(load.sessions, tag, conn, number);
                write_request(&mut bytes, tag, conn, seq, &method, session, load.payload);
                ends.push(bytes.len());
            }
            Prebuilt { bytes, ends }
        })
        .collect()
}

/// (key space, index) of a request's session, if it has one.
fn session_of(sessions: Sessions, tag: Tag, conn: usize, number: u64) -> Option<(u32, u64)> {
    match sessions {
        Sessions::None => None,
        Sessions::PerConnection => Some((0, conn as u64)),
        Sessions::Count(n) => Some((0, number % n)),
        // Warm-up and measured sessions live in separate key spaces so that every measured
        // request really opens a new session.
        Sessions::Unique => Some((if tag == MEASURED { 2 } else { 1 }, number)),
    }
}

/// Appends `{"jsonrpc":"2.0","id":…,"method":…,"params":{…}[,"sessionId":…]}\n`, padded inside
/// `params` to `payload` bytes (newline excluded) when `payload` leaves room for the padding member.
fn write_request(
    out: &mut Vec<u8>,
    tag: Tag,
    conn: usize,
    seq: usize,
    method: &str,
    session: Option<(u32, u64)>,
    payload: usize,
) {
    let start = out.len();
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    ids::write_id(out, tag, conn, seq);
    out.extend_from_slice(b",\"method\":");
    out.extend_from_slice(method.as_bytes());
    out.extend_from_slice(b",\"params\":{");
    let params_at = out.len();
    out.push(b'}');
    if let Some((space, index)) = session {
        out.extend_from_slice(b",\"sessionId\":");
        ids::write_session(out, space, index);
    }
    out.push(b'}');
    let natural = out.len() - start;
    if payload >= natural + PAD_OVERHEAD {
        let pad = payload - natural - PAD_OVERHEAD;
        let mut member = Vec::with_capacity(pad + PAD_OVERHEAD);
        member.extend_from_slice(b"\"pad\":\"");
        member.resize(member.len() + pad, b'x');
        member.push(b'"');
        out.splice(params_at..params_at, member);
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::WARMUP;

    fn load(sessions: Sessions, payload: usize) -> Load {
        Load {
            connections: 2,
            window: 10,
            requests: 5,
            sessions,
            payload,
            method: "ping".into(),
        }
    }

    fn lines(p: &Prebuilt) -> Vec<serde_json::Value> {
        let mut from = 0;
        p.ends
            .iter()
            .map(|&end| {
                let line = &p.bytes[from..end];
                from = end;
                assert_eq!(line.last(), Some(&b'\n'));
                serde_json::from_slice(line).expect("valid JSON")
            })
            .collect()
    }

    #[test]
    fn requests_are_valid_json_with_ids_and_sessions() {
        let built = build(&load(Sessions::PerConnection, 0), MEASURED);
        assert_eq!(built.iter().map(Prebuilt::len).collect::<Vec<_>>(), [3, 2]);
        let first = lines(&built[1]);
        assert_eq!(first[1]["id"], "m1.1");
        assert_eq!(first[1]["method"], "ping");
        assert_eq!(first[0]["sessionId"], first[1]["sessionId"]);
        assert_ne!(lines(&built[0])[0]["sessionId"], first[0]["sessionId"]);
        let plain = lines(&build(&load(Sessions::None, 0), MEASURED)[0]);
        assert!(plain[0].get("sessionId").is_none());
    }

    #[test]
    fn padding_reaches_the_payload_size_exactly() {
        for payload in [100, 1024, 65_536] {
            let built = build(&load(Sessions::None, payload), MEASURED);
            let mut from = 0;
            for &end in &built[0].ends {
                assert_eq!(end - from, payload + 1, "line plus newline");
                from = end;
            }
            assert!(lines(&built[0])[0]["params"]["pad"].is_string());
        }
    }

    #[test]
    fn unique_sessions_differ_between_phases_and_requests() {
        let warm = lines(&build(&load(Sessions::Unique, 0), WARMUP)[0]);
        let measured = lines(&build(&load(Sessions::Unique, 0), MEASURED)[0]);
        assert_ne!(warm[0]["sessionId"], measured[0]["sessionId"]);
        assert_ne!(measured[0]["sessionId"], measured[1]["sessionId"]);
        let counted = lines(&build(&load(Sessions::Count(2), 0), MEASURED)[0]);
        // Requests 0, 2 and 4 of the run are on connection 0: sessions 0, 0, 0 of 2.
        assert_eq!(counted[0]["sessionId"], counted[2]["sessionId"]);
    }
}
