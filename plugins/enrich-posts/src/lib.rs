//! The default enrichment policy: writes `userSnapshot` (`id`,
//! `displayName`, `avatarUrl`) into every post of a top-level `posts`
//! array, a new-post notification's `post`, or a single post object; `null`
//! for authors the Officer does not know. A post that already carries a
//! (stale) snapshot gets it written over in place; the body is scanned
//! once per response when the proxy runs both calls in one instance
//! (`post_shape::needed_ids_kept`).

use std::collections::HashMap;

use post_shape::{needed_ids_kept, splice_kept, SnapshotFields};
use serde::Serialize;

wit_bindgen::generate!({ world: "enrich-policy", path: "../wit" });

use exports::profile_edge::policy::enricher::Guest;
use profile_edge::policy::types::Profile;

struct Policy;

/// The field every post gets.
const FIELD: &str = "userSnapshot";

/// What a post carries about its author.
#[derive(Serialize)]
struct Snapshot<'a> {
    id: &'a str,
    #[serde(rename = "displayName")]
    display_name: Option<&'a str>,
    #[serde(rename = "avatarUrl")]
    avatar_url: Option<&'a str>,
}

impl Guest for Policy {
    fn needed_ids(body: String) -> Result<Vec<String>, String> {
        needed_ids_kept(body, FIELD)
    }

    fn enrich(body: String, profiles: Vec<Profile>) -> Result<String, String> {
        let mut snapshots: HashMap<String, String> = HashMap::with_capacity(profiles.len());
        for p in profiles {
            let f: SnapshotFields =
                serde_json::from_str(&p.json).map_err(|e| format!("profile {}: {e}", p.id))?;
            let snapshot = serde_json::to_string(&Snapshot {
                id: &p.id,
                display_name: f.display_name.as_deref(),
                avatar_url: f.avatar_url.as_deref(),
            })
            .map_err(|e| e.to_string())?;
            snapshots.insert(p.id, snapshot);
        }
        splice_kept(&body, FIELD, &snapshots)
    }
}

export!(Policy);
