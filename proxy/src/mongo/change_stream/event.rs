//! What one change-stream event means: for a `profile-updates` stream, a
//! user whose profile changed; for a `new-posts` stream, a new post; for
//! both, a document that cannot be used (counted and skipped), or the end
//! of the watched collection (the stream started again). Pure: the watcher
//! feeds it raw event documents, so an event of a shape nobody expected
//! can never stop the watcher.

use mongodb::bson::{Bson, Document};
use serde_json::Value;

use crate::lookup::IdRules;
use crate::notifications::post;

#[derive(Debug, PartialEq)]
pub enum Change {
    /// A watched document was inserted, updated, replaced or deleted.
    Profile { operation: String, user_id: String },
    /// A post was inserted (`new-posts`), as JSON.
    Post { post: Value },
    /// A document change whose user id is missing, of the wrong type, or
    /// refused by `profiles.id_pattern`.
    Bad { operation: String, why: String },
    /// The collection was dropped or renamed, its database dropped, or the
    /// server ended the stream: what the cache holds can no longer be
    /// matched to changes.
    Invalidate { operation: String },
    /// Anything else (events of newer servers): ignored.
    Other { operation: String },
}

impl Change {
    /// The `operation` label of `profile_edge_change_stream_events_total`.
    pub fn label(&self) -> &str {
        match self {
            Change::Bad { .. } => "bad-document",
            Change::Post { .. } => "insert",
            Change::Profile { operation, .. }
            | Change::Invalidate { operation }
            | Change::Other { operation } => operation,
        }
    }
}

/// The operation of an event, or the change it is on its own (no
/// operation, the end of the collection, an operation nobody watches).
fn operation(event: &Document) -> Result<String, Change> {
    let Ok(op) = event.get_str("operationType") else {
        return Err(Change::Bad {
            operation: "unknown".into(),
            why: "event without operationType".into(),
        });
    };
    match op {
        "insert" | "update" | "replace" | "delete" => Ok(op.to_string()),
        "drop" | "rename" | "dropDatabase" | "invalidate" => Err(Change::Invalidate {
            operation: op.to_string(),
        }),
        // Bounded, so an odd server cannot grow the metric's label set.
        other => Err(Change::Other {
            operation: if other.len() <= 32 && other.bytes().all(|b| b.is_ascii_alphanumeric()) {
                other.to_string()
            } else {
                "other".into()
            },
        }),
    }
}

/// Reads one raw event of a `new-posts` stream: an insert is a post (the
/// inserted document as JSON, whose `userId` names its author); edits and
/// removals of posts are no new posts.
pub fn classify_post(event: &Document, ids: &IdRules) -> Change {
    let operation = match operation(event) {
        Ok(op) => op,
        Err(change) => return change,
    };
    if operation != "insert" {
        return Change::Other { operation };
    }
    let Ok(doc) = event.get_document("fullDocument") else {
        return Change::Bad {
            operation,
            why: "an insert without fullDocument".into(),
        };
    };
    let Value::Object(obj) = to_json(Bson::Document(doc.clone())) else {
        return Change::Bad {
            operation,
            why: "fullDocument is not a document".into(),
        };
    };
    if let Err(e) = post::author("fullDocument", &obj, ids) {
        return Change::Bad {
            operation,
            why: e.to_string(),
        };
    }
    Change::Post {
        post: Value::Object(obj),
    }
}

/// A stored document as the JSON a client of the Posts API would see:
/// object ids as their hex strings, dates as RFC 3339, the rest in
/// MongoDB's relaxed extended JSON.
fn to_json(b: Bson) -> Value {
    match b {
        Bson::ObjectId(o) => Value::String(o.to_hex()),
        Bson::DateTime(d) => d
            .try_to_rfc3339_string()
            .map_or_else(|_| Value::from(d.timestamp_millis()), Value::String),
        Bson::Document(d) => Value::Object(d.into_iter().map(|(k, v)| (k, to_json(v))).collect()),
        Bson::Array(a) => Value::Array(a.into_iter().map(to_json).collect()),
        other => other.into_relaxed_extjson(),
    }
}

/// Reads one raw event of a `profile-updates` stream. `id_field` may be a
/// dotted path into the document.
pub fn classify(event: &Document, id_field: &str, ids: &IdRules) -> Change {
    let operation = match operation(event) {
        Ok(op) => op,
        Err(change) => return change,
    };
    let found = [
        event.get_document("fullDocument").ok(),
        event.get_document("documentKey").ok(),
    ]
    .into_iter()
    .flatten()
    .find_map(|d| lookup(d, id_field));
    let value = match found {
        Some(v) => v,
        None if operation == "delete" && id_field != "_id" => {
            return Change::Bad {
                operation,
                why: format!(
                    "a delete carries only the document key, which has no `{id_field}` (watch by `_id`, or key the collection by it)"
                ),
            }
        }
        None => {
            return Change::Bad {
                operation,
                why: format!("no `{id_field}` in the document"),
            }
        }
    };
    let user_id = match value {
        Bson::String(s) => s.clone(),
        Bson::ObjectId(o) => o.to_hex(),
        other => {
            return Change::Bad {
                operation,
                why: format!("`{id_field}` is a {:?}, not a string", other.element_type()),
            }
        }
    };
    if !ids.is_valid(&user_id) {
        return Change::Bad {
            operation,
            why: format!("`{id_field}` does not match profiles.id_pattern"),
        };
    }
    Change::Profile { operation, user_id }
}

fn lookup<'a>(doc: &'a Document, path: &str) -> Option<&'a Bson> {
    let mut parts = path.split('.');
    let mut value = doc.get(parts.next()?)?;
    for part in parts {
        value = value.as_document()?.get(part)?;
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use mongodb::bson::{doc, oid::ObjectId};
    use regex::Regex;

    use super::*;

    fn ids() -> IdRules {
        IdRules::new(Regex::new("^[a-z0-9]{1,24}$").expect("regex"), 10)
    }

    fn profile(op: &str, id: &str) -> Change {
        Change::Profile {
            operation: op.into(),
            user_id: id.into(),
        }
    }

    #[test]
    fn document_changes_name_their_user() {
        let update = doc! {"operationType": "update", "documentKey": {"_id": "u1"}, "fullDocument": {"_id": "u1", "n": 1}};
        assert_eq!(classify(&update, "_id", &ids()), profile("update", "u1"));
        let delete = doc! {"operationType": "delete", "documentKey": {"_id": "u2"}};
        assert_eq!(classify(&delete, "_id", &ids()), profile("delete", "u2"));
        let by_field = doc! {"operationType": "insert", "documentKey": {"_id": 7}, "fullDocument": {"_id": 7, "profile": {"userId": "u3"}}};
        assert_eq!(
            classify(&by_field, "profile.userId", &ids()),
            profile("insert", "u3")
        );
        let oid = ObjectId::new();
        let object_id = doc! {"operationType": "replace", "documentKey": {"_id": oid}};
        assert_eq!(
            classify(&object_id, "_id", &ids()),
            profile("replace", &oid.to_hex())
        );
    }

    #[test]
    fn unusable_ids_are_bad_documents() {
        let cases = [
            (
                doc! {"operationType": "insert", "documentKey": {"_id": 1}, "fullDocument": {"_id": 1}},
                "userId",
                "no `userId`",
            ),
            (
                doc! {"operationType": "insert", "documentKey": {"_id": 1}, "fullDocument": {"userId": 42}},
                "userId",
                "not a string",
            ),
            (
                doc! {"operationType": "update", "documentKey": {"_id": "x"}, "fullDocument": {"userId": "../etc"}},
                "userId",
                "id_pattern",
            ),
            (
                doc! {"operationType": "delete", "documentKey": {"_id": 1}},
                "userId",
                "document key",
            ),
            (doc! {"documentKey": {"_id": "a"}}, "_id", "operationType"),
        ];
        for (event, field, why_has) in cases {
            match classify(&event, field, &ids()) {
                Change::Bad { why, .. } => assert!(why.contains(why_has), "{event}: {why}"),
                other => panic!("{event}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_end_of_the_collection_invalidates() {
        for op in ["drop", "rename", "dropDatabase", "invalidate"] {
            let c = classify(&doc! {"operationType": op}, "_id", &ids());
            assert_eq!(
                c,
                Change::Invalidate {
                    operation: op.into()
                }
            );
        }
        let other = classify(&doc! {"operationType": "create index!"}, "_id", &ids());
        assert_eq!(other.label(), "other");
    }

    #[test]
    fn an_inserted_post_is_json_with_its_author() {
        let oid = ObjectId::new();
        let at = mongodb::bson::DateTime::from_millis(1_767_225_600_000);
        let insert = doc! {"operationType": "insert", "documentKey": {"_id": oid},
        "fullDocument": {"_id": oid, "userId": "u1", "text": "hi", "at": at, "likes": 3_i64, "tags": ["a"]}};
        let Change::Post { post } = classify_post(&insert, &ids()) else {
            panic!("not a post");
        };
        assert_eq!(
            post,
            serde_json::json!({"_id": oid.to_hex(), "userId": "u1", "text": "hi",
                "at": "2026-01-01T00:00:00Z", "likes": 3, "tags": ["a"]})
        );
        let update = doc! {"operationType": "update", "documentKey": {"_id": 1}};
        assert_eq!(classify_post(&update, &ids()).label(), "update");
        for (event, why) in [
            (
                doc! {"operationType": "insert", "fullDocument": {"text": "x"}},
                "fullDocument.userId",
            ),
            (
                doc! {"operationType": "insert", "fullDocument": {"userId": 4}},
                "fullDocument.userId",
            ),
            (doc! {"operationType": "insert"}, "fullDocument"),
        ] {
            match classify_post(&event, &ids()) {
                Change::Bad { why: w, .. } => assert!(w.contains(why), "{event}: {w}"),
                other => panic!("{event}: {other:?}"),
            }
        }
        assert!(matches!(
            classify_post(&doc! {"operationType": "drop"}, &ids()),
            Change::Invalidate { .. }
        ));
    }
}
