//! Reading the Codex app-server's turns as a client sees them through the bus: the id a
//! `turn/start` reply gives, the `turn/completed` notification of a turn, and the user texts a
//! turn of a `thread/resume` (or `thread/read`) result holds.

use serde_json::Value;

/// The turn id of a successful `turn/start` reply; panics with the reply if it failed.
pub fn turn_id(reply: &Value) -> String {
    reply["result"]["turn"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("turn/start failed: {reply}"))
        .to_owned()
}

/// Whether `line` is the `turn/completed` notification of `turn`.
pub fn is_completed(line: &Value, turn: &str) -> bool {
    line["method"] == "turn/completed" && line["params"]["turn"]["id"] == turn
}

/// The texts of a turn's user messages, in order.
pub fn user_texts(turn: &Value) -> Vec<String> {
    turn["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|item| item["type"] == "userMessage")
        .flat_map(|item| item["content"].as_array().cloned().unwrap_or_default())
        .filter_map(|part| part["text"].as_str().map(str::to_owned))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_turn_reads_as_its_id_completion_and_user_texts() {
        let reply = json!({"result": {"turn": {"id": "t1"}}});
        assert_eq!(turn_id(&reply), "t1");
        let done = json!({"method": "turn/completed", "params": {"turn": {"id": "t1"}}});
        assert!(is_completed(&done, "t1"));
        assert!(!is_completed(&done, "t2"));
        let turn = json!({"items": [
            {"type": "userMessage", "content": [{"type": "text", "text": "a"}, {"text": "b"}]},
            {"type": "agentMessage", "text": "not a user's"},
            {"type": "userMessage", "content": [{"type": "text", "text": "c"}]},
        ]});
        assert_eq!(user_texts(&turn), ["a", "b", "c"]);
    }
}
