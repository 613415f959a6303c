//! The worker's identity (pool, slot, pid), rendered once because every mock reply carries it.

use codex_bus_worker_io::placement::Placement;

/// Pre-rendered `"pool":…,"slot":…,"pid":…` JSON members for splicing into result objects.
#[derive(Debug, Clone)]
pub struct Identity {
    members: Vec<u8>,
}

impl Identity {
    /// The identity of this process at `placement`.
    pub fn of(placement: &Placement) -> Self {
        Self::new(&placement.pool, placement.slot, std::process::id())
    }

    /// Renders the members for an explicit pool, slot and pid.
    pub fn new(pool: &str, slot: Option<i64>, pid: u32) -> Self {
        let pool = serde_json::Value::from(pool).to_string();
        let slot = slot.map_or_else(|| "null".to_owned(), |slot| slot.to_string());
        let members = format!(r#""pool":{pool},"slot":{slot},"pid":{pid}"#).into_bytes();
        Self { members }
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
}
