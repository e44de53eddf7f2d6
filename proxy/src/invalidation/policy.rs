//! The invalidation policy (SPEC section 8) applied to one event, whatever
//! brought it: `POST /admin/events` or a change stream. The policy turns the
//! event into actions and the host carries them out (`Invalidations` for
//! ids, `PostSnapshots` for stored posts). If the policy is missing or
//! fails, the event's `userId` is invalidated anyway (fail safe: a stale
//! profile is worse than one extra origin load).

use serde_json::{json, Value};

use crate::http::error::ProxyError;
use crate::lookup::IdRules;
use crate::plugin::bindings::{Action, CallInfo};
use crate::state::State;

/// Event types whose meaning is about one profile: they need `userId`.
const NEEDS_USER_ID: &[&str] = &["profile-updated", "profile-deleted"];

/// An event body that passed the checks every event gets before a policy
/// sees it.
#[derive(Debug, PartialEq)]
pub struct Event<'a> {
    pub kind: String,
    pub user_id: Option<String>,
    /// The body as sent, for the policy.
    pub text: &'a str,
}

/// Checks an event body: JSON object, `type` a non-empty string, `userId` (when
/// present, and always for the profile event types) a valid id.
pub fn parse<'a>(body: &'a [u8], ids: &IdRules) -> Result<Event<'a>, ProxyError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| ProxyError::BadRequest("event body is not UTF-8".into()))?;
    let event: Value = serde_json::from_str(text)
        .map_err(|e| ProxyError::BadRequest(format!("event body is not JSON: {e}")))?;
    if !event.is_object() {
        return Err(ProxyError::BadRequest(
            "event body must be a JSON object".into(),
        ));
    }
    let kind = event
        .get("type")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ProxyError::BadRequest("field `type` (a non-empty string) is required".into())
        })?
        .to_string();
    let user_id = match event.get("userId") {
        None | Some(Value::Null) if NEEDS_USER_ID.contains(&kind.as_str()) => {
            return Err(ProxyError::BadRequest(format!(
                "field `userId` (a string id) is required for a {kind} event"
            )))
        }
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
    Ok(Event {
        kind,
        user_id,
        text,
    })
}

/// Applies one checked event; `source` is the invalidations' metric label
/// (`event`, `change-stream`). The answer lists what was done.
pub async fn apply(state: &State, event: &Event<'_>, source: &str) -> Value {
    let ids = state.profiles.ids();
    let user_id = &event.user_id;
    let rt = state.runtime();
    let policy = rt.config.invalidation.as_ref().map(|i| i.plugin.clone());
    let fallback = || {
        user_id
            .iter()
            .map(|id| Action::Invalidate(id.clone()))
            .collect::<Vec<_>>()
    };
    let (actions, policy_result) = match policy.as_deref().map(|n| (n, state.plugins.get(n))) {
        Some((_, Some(p))) => match p.on_event(&CallInfo::event(), event.text) {
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
        let mut line = json!({"action": verb, "userId": id});
        let result = if !ids.is_valid(id) {
            "skipped: id does not match profiles.id_pattern".to_string()
        } else {
            match &action {
                Action::Invalidate(id) => {
                    state.invalidations.invalidate(id, source).await;
                    "done".to_string()
                }
                Action::Refresh(id) => match state.invalidations.refresh(id, source).await {
                    Ok(_) => "done".to_string(),
                    Err(e) => format!("invalidated; reload failed: {e}"),
                },
                Action::RefreshPostSnapshots(id) => {
                    match state.posts.refresh(id, &state.profiles).await {
                        Ok(Some(n)) => {
                            line["posts"] = json!(n);
                            "done".to_string()
                        }
                        Ok(None) => "skipped: no [post_snapshots] is configured".to_string(),
                        Err(e) => format!("failed: {e}"),
                    }
                }
            }
        };
        line["result"] = json!(result);
        done.push(line);
    }
    json!({
        "type": event.kind,
        "policy": policy,
        "policy_result": policy_result,
        "actions": done,
    })
}

#[cfg(test)]
mod tests {
    use regex::Regex;

    use super::*;

    fn ids() -> IdRules {
        IdRules::new(Regex::new("^[a-z0-9]{1,8}$").expect("regex"), 10)
    }

    fn refused(body: &str) -> String {
        match parse(body.as_bytes(), &ids()) {
            Err(ProxyError::BadRequest(d)) => d,
            other => panic!("{body}: expected 400, got {other:?}"),
        }
    }

    #[test]
    fn profile_events_need_their_user_id() {
        assert!(refused(r#"{"type":"profile-updated"}"#).contains("`userId`"));
        assert!(refused(r#"{"type":"profile-deleted","userId":null}"#).contains("`userId`"));
        assert!(refused(r#"{"type":"profile-updated","userId":7}"#).contains("`userId` = 7"));
        assert!(refused(r#"{"type":"profile-updated","userId":"../x"}"#).contains("userId"));
        assert!(refused(r#"{"userId":"a"}"#).contains("`type`"));
        assert!(refused(r#"["profile-updated"]"#).contains("JSON object"));
        assert!(refused("{").contains("not JSON"));
    }

    /// Found by tests/fuzz (event_body, minimized input `{"type":""}`): an
    /// empty `type` names no event and was accepted.
    #[test]
    fn empty_event_type_is_refused() {
        assert!(refused(r#"{"type":""}"#).contains("`type`"));
        assert!(refused(r#"{"type":"","userId":"ab1"}"#).contains("`type`"));
    }

    #[test]
    fn other_event_types_may_leave_user_id_out() {
        let e = parse(br#"{"type":"tenant-purged"}"#, &ids()).expect("accepted");
        assert_eq!((e.kind.as_str(), e.user_id), ("tenant-purged", None));
        let e = parse(br#"{"type":"profile-updated","userId":"ab1"}"#, &ids()).expect("ok");
        assert_eq!(e.user_id.as_deref(), Some("ab1"));
    }
}
