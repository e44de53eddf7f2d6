//! Profile events (`POST /admin/events`): the invalidation policy turns an
//! event into actions and the host carries them out on every tier. If the
//! policy is missing or fails, the event's `userId` is invalidated anyway
//! (fail safe: a stale profile is worse than one extra origin load).

use serde_json::{json, Value};

use crate::http::error::ProxyError;
use crate::plugin::bindings::Action;
use crate::state::State;

/// Handles one event body; the answer lists what was done.
pub async fn handle(state: &State, body: &[u8]) -> Result<Value, ProxyError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| ProxyError::BadRequest("event body is not UTF-8".into()))?;
    let event: Value = serde_json::from_str(text)
        .map_err(|e| ProxyError::BadRequest(format!("event body is not JSON: {e}")))?;
    let kind = event
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| ProxyError::BadRequest("field `type` (a string) is required".into()))?
        .to_string();
    let ids = state.profiles.ids();
    let user_id = match event.get("userId") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) => {
            ids.check("userId", id)
                .map_err(crate::routes::profile::id_error)?;
            Some(id.clone())
        }
        Some(other) => {
            return Err(ProxyError::BadRequest(format!(
                "field `userId` = {other} must be a string id matching profiles.id_pattern"
            )))
        }
    };

    let rt = state.runtime();
    let policy = rt.config.invalidation.as_ref().map(|i| i.plugin.clone());
    let fallback = || {
        user_id
            .iter()
            .map(|id| Action::Invalidate(id.clone()))
            .collect::<Vec<_>>()
    };
    let (actions, policy_result) = match policy.as_deref().map(|n| (n, state.plugins.get(n))) {
        Some((_, Some(p))) => match p.on_event(text) {
            Ok(actions) => (actions, "ok".to_string()),
            Err(e) => (
                fallback(),
                format!("{}: {e}; invalidated userId instead", e.outcome()),
            ),
        },
        Some((name, None)) => (
            fallback(),
            format!("policy {name} is not loaded; invalidated userId instead"),
        ),
        None => (
            fallback(),
            "no [invalidation] policy configured; invalidated userId".to_string(),
        ),
    };

    let mut done = Vec::with_capacity(actions.len());
    for action in actions {
        let (verb, id) = match &action {
            Action::Invalidate(id) => ("invalidate", id),
            Action::Refresh(id) => ("refresh", id),
            Action::RefreshPostSnapshots(id) => ("refresh-post-snapshots", id),
        };
        let result = if !ids.is_valid(id) {
            "skipped: id does not match profiles.id_pattern".to_string()
        } else {
            match &action {
                Action::Invalidate(id) => {
                    state.profiles.invalidate(id, "event").await;
                    "done".to_string()
                }
                Action::Refresh(id) => {
                    state.profiles.invalidate(id, "event").await;
                    match state.profiles.get(id).await {
                        Ok(_) => "done".to_string(),
                        Err(e) => format!("invalidated; reload failed: {e}"),
                    }
                }
                // Post snapshots live in the MongoDB posts collection, which
                // this build has no tier for yet.
                Action::RefreshPostSnapshots(_) => {
                    "skipped: no post snapshot store is configured".to_string()
                }
            }
        };
        done.push(json!({"action": verb, "userId": id, "result": result}));
    }
    Ok(json!({
        "type": kind,
        "policy": policy,
        "policy_result": policy_result,
        "actions": done,
    }))
}
