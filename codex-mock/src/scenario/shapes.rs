//! The v0.169.0 shapes of threads, turns, items and results, as the scenario emits them.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The Codex version the shapes follow.
pub const CLI_VERSION: &str = "0.169.0";

/// A thread's `preview` is its first user message cut to this many characters.
pub const PREVIEW_CHARS: usize = 80;

/// What a thread is, as far as the scenario needs (and persists).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThreadMeta {
    /// No rollout: not persisted, lost with the process.
    pub ephemeral: bool,
    /// Working directory.
    pub cwd: String,
    /// Model name.
    pub model: String,
    /// Creation time, epoch seconds.
    pub created_s: u64,
    /// Last update, epoch seconds.
    pub updated_s: u64,
    /// The first user message, cut short.
    pub preview: String,
    /// The thread it was forked from.
    pub forked_from: Option<String>,
}

/// A Thread object; `path` is its rollout (`None`: ephemeral), `turns` its history (empty but
/// in `thread/resume`, `thread/fork` and `thread/read` with `includeTurns`).
pub fn thread(id: &str, meta: &ThreadMeta, path: Option<&str>, turns: &[Value]) -> Value {
    json!({
        "id": id,
        "sessionId": id,
        "forkedFromId": meta.forked_from,
        "parentThreadId": null,
        "preview": meta.preview,
        "ephemeral": meta.ephemeral,
        "projectId": null,
        "modelProvider": "mock_provider",
        "model": meta.model,
        "createdAt": meta.created_s,
        "updatedAt": meta.updated_s,
        "status": {"type": "idle"},
        "path": path,
        "cwd": meta.cwd,
        "cliVersion": CLI_VERSION,
        "source": "vscode",
        "name": null,
        "turns": turns,
    })
}

/// The result of `thread/start`, `thread/resume` and `thread/fork`, with `thread` as
/// [`thread`] makes it.
pub fn thread_result(thread: Value, meta: &ThreadMeta) -> Value {
    json!({
        "thread": thread,
        "model": meta.model,
        "modelProvider": "mock_provider",
        "serviceTier": null,
        "cwd": meta.cwd,
        "approvalPolicy": "on-request",
        "approvalsReviewer": "user",
        "sandbox": {"type": "readOnly", "networkAccess": false},
        "reasoningEffort": null,
        "instructionSources": [],
        "disabledPluginIds": [],
    })
}

/// A Turn object.
pub fn turn(
    id: &str,
    status: &str,
    error: Option<Value>,
    times: TurnTimes,
    items: &[Value],
) -> Value {
    json!({
        "id": id,
        "items": items,
        "status": status,
        "error": error,
        "startedAt": times.started_s,
        "completedAt": times.completed_s,
        "durationMs": times.duration_ms,
    })
}

/// When a turn ran.
#[derive(Debug, Clone, Copy, Default)]
pub struct TurnTimes {
    /// Start, epoch seconds.
    pub started_s: Option<u64>,
    /// End, epoch seconds.
    pub completed_s: Option<u64>,
    /// Duration.
    pub duration_ms: Option<u64>,
}

/// A `userMessage` item.
pub fn user_item(id: &str, text: &str) -> Value {
    json!({"type": "userMessage", "id": id, "content": [{"type": "text", "text": text, "text_elements": []}]})
}

/// An `agentMessage` item.
pub fn agent_item(id: &str, text: &str) -> Value {
    json!({"type": "agentMessage", "id": id, "text": text, "phase": null})
}

/// A `commandExecution` item.
pub fn command_item(id: &str, cwd: &str, status: &str) -> Value {
    let done = status != "inProgress";
    json!({
        "type": "commandExecution",
        "id": id,
        "command": "mock-tool --apply",
        "cwd": cwd,
        "commandActions": [],
        "status": status,
        "aggregatedOutput": if status == "completed" { Value::from("ok\n") } else { Value::Null },
        "exitCode": if status == "completed" { Value::from(0) } else { Value::Null },
        "durationMs": if done { Value::from(0) } else { Value::Null },
    })
}

/// A `fileChange` item.
pub fn file_item(id: &str, status: &str) -> Value {
    json!({
        "type": "fileChange",
        "id": id,
        "changes": [{"path": "mock.txt", "kind": {"type": "add"}, "diff": "+mock\n"}],
        "status": status,
    })
}

/// `thread/tokenUsage/updated`'s usage for a turn that read `input` and wrote `output` bytes.
pub fn token_usage(input: usize, output: usize) -> Value {
    let (input, output) = (input.div_ceil(4), output.div_ceil(4));
    let breakdown = json!({
        "totalTokens": input + output,
        "inputTokens": input,
        "cachedInputTokens": 0,
        "outputTokens": output,
        "reasoningOutputTokens": 0,
    });
    json!({"total": breakdown, "last": breakdown, "modelContextWindow": 258_400})
}

/// The result of `model/list`.
pub fn model_list() -> Value {
    json!({
        "data": [{
            "id": "mock-model",
            "model": "mock-model",
            "displayName": "Mock model",
            "description": "Deterministic scenario model of codex-mock",
            "hidden": false,
            "isDefault": true,
            "defaultReasoningEffort": "medium",
            "supportedReasoningEfforts": [],
        }],
        "nextCursor": null,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_objects_have_the_required_fields() {
        let meta = ThreadMeta {
            ephemeral: true,
            cwd: "/w".into(),
            model: "m".into(),
            created_s: 1,
            updated_s: 2,
            preview: String::new(),
            forked_from: None,
        };
        let value = thread("thr_1", &meta, None, &[]);
        for field in [
            "cliVersion",
            "createdAt",
            "cwd",
            "ephemeral",
            "id",
            "modelProvider",
            "preview",
            "projectId",
            "sessionId",
            "source",
            "status",
            "turns",
            "updatedAt",
        ] {
            assert!(value.get(field).is_some(), "{field}");
        }
        assert_eq!(value["path"], Value::Null);
        let result = thread_result(value, &meta);
        for field in [
            "approvalPolicy",
            "approvalsReviewer",
            "cwd",
            "model",
            "modelProvider",
            "sandbox",
            "thread",
        ] {
            assert!(result.get(field).is_some(), "{field}");
        }
    }
}
