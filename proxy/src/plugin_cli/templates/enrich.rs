//! {{name}}: an enrichment policy (world `enrich-policy`). It writes an
//! author snapshot `{id, displayName, avatarUrl}` into every post of a feed
//! (`{"posts": [...]}`), a new-post notification (`{"post": {...}}`), a
//! single post (an object with `userId`) or a top-level array of posts;
//! `null` for authors the Officer does not know.
//!
//! Settings (`[plugins.NAME] config = {...}`, read through `host::config()`):
//! `target`, the field it writes (default `"userSnapshot"`).

mod host;

use std::collections::HashMap;

use serde_json::{json, Map, Value};

wit_bindgen::generate!({ world: "enrich-policy", path: "{{wit_path}}" });

use exports::profile_edge::policy::enricher::Guest;
use host::Level;
use profile_edge::policy::types::Profile;

struct Policy;

/// The field of a post that names its author.
const AUTHOR: &str = "userId";

fn target() -> String {
    let settings: Value = serde_json::from_str(&host::config()).unwrap_or(Value::Null);
    settings
        .get("target")
        .and_then(Value::as_str)
        .unwrap_or("userSnapshot")
        .to_string()
}

fn parse(body: &str) -> Result<Value, String> {
    serde_json::from_str(body).map_err(|e| format!("body is not JSON: {e}"))
}

/// The post objects of a body, whatever its shape.
fn posts_mut(doc: &mut Value) -> Vec<&mut Map<String, Value>> {
    // Where the posts are is decided before borrowing mutably.
    let field = match doc.as_object() {
        Some(o) if o.contains_key("posts") => Some("posts"),
        Some(o) if o.contains_key("post") => Some("post"),
        _ => None,
    };
    let posts = match field {
        Some(f) => &mut doc[f],
        None => doc,
    };
    match posts {
        Value::Array(list) => list.iter_mut().filter_map(Value::as_object_mut).collect(),
        Value::Object(post) if post.contains_key(AUTHOR) => vec![post],
        _ => Vec::new(),
    }
}

/// What a post carries about its author, from the profile JSON the
/// Officer sent (fields: id, displayName, avatarUrl, bio, location,
/// updatedAt, version).
fn snapshot(profile: &Profile) -> Result<Value, String> {
    let p: Value =
        serde_json::from_str(&profile.json).map_err(|e| format!("profile {}: {e}", profile.id))?;
    Ok(json!({
        "id": profile.id,
        "displayName": p.get("displayName").cloned().unwrap_or(Value::Null),
        "avatarUrl": p.get("avatarUrl").cloned().unwrap_or(Value::Null),
    }))
}

impl Guest for Policy {
    fn needed_ids(body: String) -> Result<Vec<String>, String> {
        let mut doc = parse(&body)?;
        let mut ids: Vec<String> = Vec::new();
        for post in posts_mut(&mut doc) {
            if let Some(id) = post.get(AUTHOR).and_then(Value::as_str) {
                if !ids.iter().any(|x| x == id) {
                    ids.push(id.to_string());
                }
            }
        }
        Ok(ids)
    }

    fn enrich(body: String, profiles: Vec<Profile>) -> Result<String, String> {
        let target = target();
        let mut snapshots: HashMap<String, Value> = HashMap::with_capacity(profiles.len());
        for p in &profiles {
            snapshots.insert(p.id.clone(), snapshot(p)?);
        }
        let mut doc = parse(&body)?;
        let mut unknown = 0;
        for post in posts_mut(&mut doc) {
            let snap = post
                .get(AUTHOR)
                .and_then(Value::as_str)
                .and_then(|id| snapshots.get(id).cloned());
            if snap.is_none() {
                unknown += 1;
            }
            post.insert(target.clone(), snap.unwrap_or(Value::Null));
        }
        if unknown > 0 {
            host::log(
                Level::Info,
                &format!("{unknown} post(s) by unknown authors"),
            );
        }
        serde_json::to_string(&doc).map_err(|e| e.to_string())
    }
}

export!(Policy);

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(id: &str, name: &str) -> Profile {
        Profile {
            id: id.to_string(),
            json: json!({"id": id, "displayName": name, "avatarUrl": format!("https://cdn.example.com/{id}.png")})
                .to_string(),
        }
    }

    const FEED: &str = r#"{"posts":[{"id":"p1","userId":"u1"},{"id":"p2","userId":"u2"},{"id":"p3","userId":"u1"}]}"#;

    #[test]
    fn needed_ids_names_each_author_once() {
        assert_eq!(Policy::needed_ids(FEED.into()).unwrap(), ["u1", "u2"]);
        let single = r#"{"id":"p1","userId":"u9"}"#;
        assert_eq!(Policy::needed_ids(single.into()).unwrap(), ["u9"]);
        let array = r#"[{"id":"p1","userId":"u3"}]"#;
        assert_eq!(Policy::needed_ids(array.into()).unwrap(), ["u3"]);
    }

    #[test]
    fn enrich_writes_a_snapshot_and_null_for_unknown_authors() {
        let out = Policy::enrich(FEED.into(), vec![profile("u1", "Ada")]).unwrap();
        let out: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(out["posts"][0]["userSnapshot"]["displayName"], "Ada");
        assert_eq!(out["posts"][2]["userSnapshot"]["id"], "u1");
        assert_eq!(out["posts"][1]["userSnapshot"], Value::Null);
        let logs = host::take_logs();
        assert_eq!(logs.len(), 1, "{logs:?}");
        assert!(logs[0].1.contains("1 post(s) by unknown authors"));
    }

    #[test]
    fn the_target_field_comes_from_the_config() {
        host::set_config(r#"{"target":"author"}"#);
        let out = Policy::enrich(FEED.into(), vec![profile("u1", "Ada")]).unwrap();
        let out: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(out["posts"][0]["author"]["displayName"], "Ada");
        assert!(out["posts"][0].get("userSnapshot").is_none());
    }

    #[test]
    fn a_body_that_is_not_json_is_an_error() {
        let err = Policy::needed_ids("not json".into()).unwrap_err();
        assert!(err.contains("not JSON"), "{err}");
    }
}
