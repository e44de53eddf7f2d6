//! The default enrichment policy: writes `userSnapshot` (`id`,
//! `displayName`, `avatarUrl`) into every post of a top-level `posts`
//! array, a new-post notification's `post`, or a single post object; `null`
//! for authors the Officer does not know.

use std::collections::HashMap;

use post_shape::{author_ids, parse, posts_mut};
use serde_json::{json, Value};

wit_bindgen::generate!({ world: "enrich-policy", path: "../wit" });

use exports::profile_edge::policy::enricher::Guest;
use profile_edge::policy::types::Profile;

struct Policy;

impl Guest for Policy {
    fn needed_ids(body: String) -> Result<Vec<String>, String> {
        Ok(author_ids(&mut parse(&body)?))
    }

    fn enrich(body: String, profiles: Vec<Profile>) -> Result<String, String> {
        let mut doc = parse(&body)?;
        let mut snapshots: HashMap<String, Value> = HashMap::with_capacity(profiles.len());
        for p in profiles {
            let v: Value =
                serde_json::from_str(&p.json).map_err(|e| format!("profile {}: {e}", p.id))?;
            let snapshot = json!({
                "id": p.id,
                "displayName": v.get("displayName").cloned().unwrap_or(Value::Null),
                "avatarUrl": v.get("avatarUrl").cloned().unwrap_or(Value::Null),
            });
            snapshots.insert(p.id, snapshot);
        }
        for post in posts_mut(&mut doc) {
            let snapshot = post
                .get("userId")
                .and_then(Value::as_str)
                .and_then(|id| snapshots.get(id).cloned())
                .unwrap_or(Value::Null);
            post.insert("userSnapshot".into(), snapshot);
        }
        serde_json::to_string(&doc).map_err(|e| e.to_string())
    }
}

export!(Policy);
