//! The default enrichment policy: writes `userSnapshot` (`id`,
//! `displayName`, `avatarUrl`) into every post of a top-level `posts`
//! array, a new-post notification's `post`, or a single post object; `null`
//! for authors the Officer does not know. A post that already carries a
//! (stale) snapshot gets it written over in place; the body is scanned
//! once per response when the proxy runs both calls in one instance
//! (`post_shape::needed_ids_kept`), and each snapshot is written from the
//! profile's own JSON text (`post_shape::string_fields`).

use std::collections::HashMap;

use post_shape::{needed_ids_kept, push_json_string, splice_kept, string_fields};

wit_bindgen::generate!({ world: "enrich-policy", path: "../wit" });

use exports::profile_edge::policy::enricher::Guest;
use profile_edge::policy::types::Profile;

struct Policy;

/// The field every post gets.
const FIELD: &str = "userSnapshot";

/// What a post carries about its author, as JSON text:
/// `{"id":...,"displayName":...,"avatarUrl":...}`, a field that the profile
/// lacks (or has as another type than string) being `null`.
fn snapshot(p: &Profile) -> Result<String, String> {
    let [name, avatar] = string_fields(&p.json, ["displayName", "avatarUrl"])
        .map_err(|e| format!("profile {}: {e}", p.id))?;
    let (name, avatar) = (name.unwrap_or("null"), avatar.unwrap_or("null"));
    let mut out = String::with_capacity(48 + p.id.len() + name.len() + avatar.len());
    out.push_str("{\"id\":");
    push_json_string(&mut out, &p.id);
    out.push_str(",\"displayName\":");
    out.push_str(name);
    out.push_str(",\"avatarUrl\":");
    out.push_str(avatar);
    out.push('}');
    Ok(out)
}

impl Guest for Policy {
    fn needed_ids(body: String) -> Result<Vec<String>, String> {
        needed_ids_kept(body, FIELD)
    }

    fn enrich(body: String, profiles: Vec<Profile>) -> Result<String, String> {
        let mut snapshots: HashMap<String, String> = HashMap::with_capacity(profiles.len());
        for p in profiles {
            let snapshot = snapshot(&p)?;
            snapshots.insert(p.id, snapshot);
        }
        splice_kept(&body, FIELD, &snapshots)
    }
}

export!(Policy);
