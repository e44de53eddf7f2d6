//! `enrich-posts` as it was built before `profile-edge:policy@0.2.0`: bound
//! to the previous WIT version (`plugins/wit/previous/0.1.0`), it writes
//! the same `userSnapshot` into each post. The test suite loads it next to
//! current policies to show that a guest keeps working through one WIT
//! upgrade.

use std::collections::HashMap;

use post_shape::{author_ids_of, splice_snapshots, SnapshotFields};
use serde::Serialize;

wit_bindgen::generate!({ world: "enrich-policy", path: "../../wit/previous/0.1.0" });

use exports::profile_edge::policy::enricher::Guest;
use profile_edge::policy::types::Profile;

struct Policy;

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
        author_ids_of(&body)
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
        splice_snapshots(&body, "userSnapshot", &snapshots)
    }
}

export!(Policy);
