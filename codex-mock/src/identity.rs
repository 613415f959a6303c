//! The worker's identity (pool, slot, pid, and the optional `--tag`), rendered once because every
//! mock reply carries it.

use codex_bus_worker_io::placement::Placement;

/// Pre-rendered `"pool":…,"slot":…,"pid":…[,"tag":…]` JSON members for splicing into result
/// objects.
#[derive(Debug, Clone)]
pub struct Identity {
    members: Vec<u8>,
}

impl Identity {
    /// The identity of this process at `placement`, tagged `tag` when given (`--tag`).
    pub fn of(placement: &Placement, tag: Option<&str>) -> Self {
        Self::new(&placement.pool, placement.slot, std::process::id()).tagged(tag)
    }

    /// Renders the members for an explicit pool, slot and pid.
    pub fn new(pool: &str, slot: Option<i64>, pid: u32) -> Self {
        let pool = serde_json::Value::from(pool).to_string();
        let slot = slot.map_or_else(|| "null".to_owned(), |slot| slot.to_string());
        let members = format!(r#""pool":{pool},"slot":{slot},"pid":{pid}"#).into_bytes();
        Self { members }
    }

    /// Adds a `"tag"` member after the others (nothing when `tag` is `None`): which version of a
    /// pool's worker answered, for a test that rolls a pool from one tag to another.
    pub fn tagged(mut self, tag: Option<&str>) -> Self {
        if let Some(tag) = tag {
            let tag = serde_json::Value::from(tag).to_string();
            self.members.extend_from_slice(b",\"tag\":");
            self.members.extend_from_slice(tag.as_bytes());
        }
        self
    }

    /// The members without surrounding braces.
    pub fn members(&self) -> &[u8] {
        &self.members
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_escaped_pool_and_integer_slot() {
        let identity = Identity::new("a\"b", Some(3), 42);
        assert_eq!(identity.members(), br#""pool":"a\"b","slot":3,"pid":42"#);
    }

    #[test]
    fn missing_slot_is_null() {
        let identity = Identity::new("", None, 1);
        assert_eq!(identity.members(), br#""pool":"","slot":null,"pid":1"#);
    }

    #[test]
    fn no_tag_adds_nothing() {
        let identity = Identity::new("p", Some(0), 7).tagged(None);
        assert_eq!(identity.members(), br#""pool":"p","slot":0,"pid":7"#);
    }

    #[test]
    fn a_tag_follows_the_pid_escaped() {
        let identity = Identity::new("p", Some(0), 7).tagged(Some("v\"2\\"));
        assert_eq!(
            identity.members(),
            br#""pool":"p","slot":0,"pid":7,"tag":"v\"2\\""#
        );
        let members = format!("{{{}}}", String::from_utf8_lossy(identity.members()));
        let value: serde_json::Value = serde_json::from_str(&members).unwrap();
        assert_eq!(value["tag"], "v\"2\\");
    }

    #[test]
    fn of_takes_this_process_pid_and_the_tag() {
        let placement = Placement {
            pool: "codex".into(),
            slot: Some(2),
        };
        let members = format!(
            "{{{}}}",
            String::from_utf8_lossy(Identity::of(&placement, Some("v1")).members())
        );
        let value: serde_json::Value = serde_json::from_str(&members).unwrap();
        assert_eq!(value["pid"], std::process::id());
        assert_eq!(
            (value["pool"].as_str(), value["slot"].as_i64()),
            (Some("codex"), Some(2))
        );
        assert_eq!(value["tag"], "v1");
    }
}
