//! `POST /admin/notifications`: a new post, `{"post": {...}}`, sent to the
//! notification stream (enriched once, fanned out). The post is checked
//! first: an object whose `userId` is a valid id.

use serde_json::{json, Value};

use crate::http::error::ProxyError;
use crate::lookup::IdRules;
use crate::notifications::post;
use crate::state::State;

/// The post of a body, checked.
pub fn parse(body: &[u8], ids: &IdRules) -> Result<Value, ProxyError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ProxyError::BadRequest(format!("body is not JSON: {e}")))?;
    let Some(Value::Object(obj)) = v.as_object().and_then(|o| o.get("post")) else {
        return Err(ProxyError::BadRequest(
            "field `post` (a JSON object) is required".into(),
        ));
    };
    post::author("post", obj, ids).map_err(|e| ProxyError::BadRequest(e.to_string()))?;
    Ok(Value::Object(obj.clone()))
}

pub async fn handle(state: &State, body: &[u8]) -> Result<Value, ProxyError> {
    let post = parse(body, &state.profiles.ids())?;
    let done = state
        .notifications
        .publish(state, post)
        .await
        .ok_or_else(|| ProxyError::NotFound("[notifications] is not configured".into()))?;
    Ok(json!({
        "id": done.id,
        "enriched": done.enriched,
        "subscribers": done.subscribers,
        "relayed": done.relayed,
    }))
}

#[cfg(test)]
mod tests {
    use regex::Regex;

    use super::*;

    fn refused(body: &str) -> String {
        let ids = IdRules::new(Regex::new("^[a-z0-9]{1,8}$").expect("regex"), 10);
        match parse(body.as_bytes(), &ids) {
            Err(ProxyError::BadRequest(d)) => d,
            other => panic!("{body}: expected 400, got {other:?}"),
        }
    }

    #[test]
    fn the_post_and_its_author_are_named() {
        assert!(refused("{").contains("not JSON"));
        assert!(refused(r#"{"posts": []}"#).contains("`post`"));
        assert!(refused(r#"{"post": 3}"#).contains("`post`"));
        assert!(refused(r#"{"post": {}}"#).contains("`post.userId`"));
        assert!(refused(r#"{"post": {"userId": 7}}"#).contains("`post.userId` = 7"));
        assert!(refused(r#"{"post": {"userId": "../x"}}"#).contains("post.userId"));
    }
}
