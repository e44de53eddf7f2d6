//! An example of a policy with its own settings: copies the profile fields
//! named in its config into each post, under a field of its choosing.
//!
//! ```toml
//! [plugins.enrich-fields]
//! path = "plugins/dist/enrich_fields.wasm"
//! config = { target = "author", fields = ["id", "displayName", "avatarUrl", "location"] }
//! ```
//!
//! Defaults: `target = "userSnapshot"`, `fields = ["id", "displayName", "avatarUrl"]`.

use std::collections::HashMap;

use post_shape::{author_ids_of, parse, posts_mut};
use serde_json::{Map, Value};

wit_bindgen::generate!({ world: "enrich-policy", path: "../wit" });

use exports::profile_edge::policy::enricher::Guest;
use profile_edge::policy::host::{config, log, Level};
use profile_edge::policy::types::Profile;

struct Policy;

struct Settings {
    target: String,
    fields: Vec<String>,
}

fn settings() -> Settings {
    let v: Value = serde_json::from_str(&config()).unwrap_or(Value::Null);
    let target = v
        .get("target")
        .and_then(Value::as_str)
        .unwrap_or("userSnapshot")
        .to_string();
    let fields = match v.get("fields").and_then(Value::as_array) {
        Some(list) => list
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        None => ["id", "displayName", "avatarUrl"]
            .map(String::from)
            .to_vec(),
    };
    Settings { target, fields }
}

impl Guest for Policy {
    fn needed_ids(body: String) -> Result<Vec<String>, String> {
        author_ids_of(&body)
    }

    fn enrich(body: String, profiles: Vec<Profile>) -> Result<String, String> {
        let s = settings();
        let mut doc = parse(&body)?;
        let mut picked: HashMap<String, Value> = HashMap::new();
        for p in profiles {
            let v: Value = serde_json::from_str(&p.json).map_err(|e| e.to_string())?;
            let mut out = Map::new();
            for f in &s.fields {
                out.insert(f.clone(), v.get(f).cloned().unwrap_or(Value::Null));
            }
            picked.insert(p.id, Value::Object(out));
        }
        let mut unknown = 0;
        for post in posts_mut(&mut doc) {
            let snap = post
                .get("userId")
                .and_then(Value::as_str)
                .and_then(|id| picked.get(id).cloned());
            if snap.is_none() {
                unknown += 1;
            }
            post.insert(s.target.clone(), snap.unwrap_or(Value::Null));
        }
        if unknown > 0 {
            log(Level::Debug, &format!("{unknown} posts by unknown authors"));
        }
        serde_json::to_string(&doc).map_err(|e| e.to_string())
    }
}

export!(Policy);
