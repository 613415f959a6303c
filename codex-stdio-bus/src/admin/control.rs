//! What `codex-stdio-bus reload` and `restart` make of the admin endpoint's answer to
//! `POST /reload` and `POST /restart`: a line for the result (and its reason), one per change.

use serde_json::Value;

use super::fetch::Answer;

/// An answer, rendered for the operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// Whether the request succeeded (`applied` or `unchanged`): exit status 0, else 1.
    pub success: bool,
    /// The lines to print, each newline-terminated: `RESULT[: REASON]`, then `  CHANGE` per
    /// change. For an answer that is not the JSON outcome (401, 403, 503), its status line and
    /// text.
    pub text: String,
}

/// Renders `answer` (`{"result", "reason", "changes"}`, or a plain-text refusal).
pub fn report(answer: &Answer) -> Report {
    let outcome: Option<Value> = serde_json::from_str(&answer.body).ok();
    let Some(result) = outcome
        .as_ref()
        .and_then(|outcome| outcome.get("result"))
        .and_then(Value::as_str)
    else {
        // A 401 is most often a token the command did not send.
        let hint = match (answer.status, std::env::var_os(super::TOKEN_VARIABLE)) {
            (401, None) => format!(
                "\n(set {} to the token of metrics.bearer_sha256)",
                super::TOKEN_VARIABLE
            ),
            _ => String::new(),
        };
        return Report {
            success: false,
            text: format!("{}: {}{hint}\n", answer.status_line, answer.body.trim()),
        };
    };
    let outcome = outcome.as_ref().unwrap_or(&Value::Null);
    let mut text = result.to_owned();
    if let Some(reason) = outcome.get("reason").and_then(Value::as_str) {
        text.push_str(": ");
        text.push_str(reason);
    }
    text.push('\n');
    let changes = outcome.get("changes").and_then(Value::as_array);
    for change in changes.into_iter().flatten().filter_map(Value::as_str) {
        text.push_str("  ");
        text.push_str(change);
        text.push('\n');
    }
    Report {
        success: answer.status == 200 && matches!(result, "applied" | "unchanged"),
        text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str) -> Answer {
        Answer {
            status,
            status_line: format!("HTTP/1.1 {status} X"),
            body: body.to_owned(),
        }
    }

    #[test]
    fn outcomes_print_their_result_reason_and_changes() {
        let applied = report(&answer(
            200,
            r#"{"result":"applied","reason":null,"changes":["pool a rolled","pool b removed"]}"#,
        ));
        assert!(applied.success);
        assert_eq!(applied.text, "applied\n  pool a rolled\n  pool b removed\n");
        let unchanged = report(&answer(200, r#"{"result":"unchanged","changes":[]}"#));
        assert_eq!(
            (unchanged.success, unchanged.text.as_str()),
            (true, "unchanged\n")
        );
        let rejected = report(&answer(
            422,
            r#"{"result":"rejected","reason":"limits changed: a restart is needed to apply it","changes":[]}"#,
        ));
        assert!(!rejected.success);
        assert_eq!(
            rejected.text,
            "rejected: limits changed: a restart is needed to apply it\n"
        );
        assert!(
            !report(&answer(
                409,
                r#"{"result":"busy","reason":"a reload is running"}"#
            ))
            .success
        );
    }

    #[test]
    fn a_plain_refusal_prints_its_status_and_text() {
        let refused = report(&answer(403, "forbidden: set metrics.bearer_sha256\n"));
        assert!(!refused.success);
        assert_eq!(
            refused.text,
            "HTTP/1.1 403 X: forbidden: set metrics.bearer_sha256\n"
        );
    }
}
