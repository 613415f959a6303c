//! Cluster mode's decisions against a real (SQLite) store, without a child.

use std::time::Duration;

use super::*;
use crate::app_server::sessions::key_of as session_key;

async fn cluster(dir: &std::path::Path) -> Cluster {
    let config = ClusterConfig {
        store: format!("sqlite:{}", dir.join("store.sqlite").display()),
        shared_dir: dir.join("shared"),
        holder: "node/pool/0".to_owned(),
        lease_ttl: Duration::from_secs(30),
        lease_idle: Duration::from_secs(300),
        idempotency_ttl: Duration::from_secs(3600),
        max_reply: 1 << 20,
        request_timeout: Duration::from_secs(60),
    };
    Cluster::open(config).await.unwrap().0
}

fn request(id: u64, method: &str, params: &str, key: Option<&str>) -> Vec<u8> {
    let key = key.map_or(String::new(), |key| {
        format!(",\"idempotencyKey\":\"{key}\"")
    });
    format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":\"{method}\",\"params\":{params},\"sessionId\":\"s1\"{key}}}"
    )
    .into_bytes()
}

async fn begin(cluster: &Cluster, session: &SessionKey, key: &Key) -> Begin {
    let op = Op::Begin {
        session: session.clone(),
        owner: key.0.clone(),
        key: key.1.clone(),
    };
    match cluster.tasks.run(op).await {
        Some(Done::Begun { result, .. }) => result.unwrap(),
        other => panic!("not a begin: {other:?}"),
    }
}

/// A retry queued (not yet admitted) behind another blocked line while its key's first attempt
/// runs in Codex: a drain refuses the retry, but the key is the first attempt's, not the
/// retry's to release, so its record stays (a later retry must not run it again).
#[tokio::test]
async fn a_drain_leaves_the_key_of_a_first_attempt_that_runs() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = cluster(dir.path()).await;
    let session = session_key(b"\"s1\"").unwrap();
    let params = r#"{"threadId":"t1","input":[]}"#;
    let first = request(1, "turn/start", params, Some("k1"));
    let key: Key = (
        owner_name(&Scope::of(&session, None)),
        keys::key_of(&first, "turn/start").unwrap().unwrap(),
    );
    // The first attempt began its record and was passed on: it runs in Codex.
    assert!(matches!(begin(&cluster, &session, &key).await, Begin::New));
    cluster.keyed.begin(key.clone());
    cluster
        .keyed
        .expect_reply(&session, b"1".to_vec(), key.clone());
    // A line waits for the store; the retry waits behind it.
    let waiting = request(2, "thread/read", r#"{"threadId":"t2"}"#, None);
    let retry = request(3, "turn/start", params, Some("k1"));
    cluster.blocked_bytes = waiting.len() + retry.len();
    cluster.blocked.insert(
        session.clone(),
        VecDeque::from([
            Head {
                line: waiting,
                key: None,
            },
            Head {
                line: retry,
                key: None,
            },
        ]),
    );
    let mut fx = Effects::default();
    cluster.finish(&mut fx).await;
    // Both blocked lines are refused; the first attempt still runs here and in the store.
    assert_eq!(fx.bus.len(), 2);
    assert!(cluster.keyed.runs(&key));
    assert!(matches!(
        begin(&cluster, &session, &key).await,
        Begin::Running { .. }
    ));
}
