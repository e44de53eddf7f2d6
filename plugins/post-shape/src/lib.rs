//! The shapes of Posts API bodies an enrichment policy meets: a feed
//! (`{"posts": [...]}`), a new-post notification (`{"post": {...}}`), or a
//! single post (an object with `userId`). Read into a `serde_json::Value`
//! (`parse`, `posts_mut`) for policies that rewrite posts freely, or
//! scanned in place (`Plan`, over `scan`) to name authors and write one
//! field, which is what the default policy does on every feed.

use std::borrow::Cow;
use std::collections::HashMap;

use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};

mod fields;
mod kept;
mod plan;
pub mod scan;

pub use fields::{push_json_string, string_fields};
pub use kept::{needed_ids_kept, splice_kept};
pub use plan::Plan;

/// The post objects of a body, whatever its shape.
pub fn posts_mut(doc: &mut Value) -> Vec<&mut Map<String, Value>> {
    let Some(obj) = doc.as_object_mut() else {
        return Vec::new();
    };
    if obj.contains_key("posts") {
        return match obj.get_mut("posts") {
            Some(Value::Array(posts)) => {
                posts.iter_mut().filter_map(Value::as_object_mut).collect()
            }
            _ => Vec::new(),
        };
    }
    if obj.contains_key("post") {
        return obj
            .get_mut("post")
            .and_then(Value::as_object_mut)
            .into_iter()
            .collect();
    }
    if obj.contains_key("userId") {
        return vec![obj];
    }
    Vec::new()
}

/// The distinct authors (`userId`) of a body's posts, in order of appearance.
pub fn author_ids(doc: &mut Value) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    for post in posts_mut(doc) {
        if let Some(id) = post.get("userId").and_then(Value::as_str) {
            if !ids.iter().any(|x| x == id) {
                ids.push(id.to_string());
            }
        }
    }
    ids
}

/// The distinct authors of a body's posts, found in one scan that builds
/// nothing (`Plan`): the same answer as `author_ids`, for the shapes
/// `posts_mut` knows. Read leniently: a post whose `userId` is not a
/// string (or that is not an object) names no author, and the rest of the
/// feed is still enriched.
pub fn author_ids_of(body: &str) -> Result<Vec<String>, String> {
    Ok(Plan::authors(body)?.author_ids(body))
}

/// The fields of a profile a snapshot usually needs, read without building
/// the whole profile; a field of another type than string reads as absent.
#[derive(Deserialize)]
pub struct SnapshotFields<'a> {
    #[serde(borrow, default, rename = "displayName", deserialize_with = "lenient")]
    pub display_name: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "avatarUrl", deserialize_with = "lenient")]
    pub avatar_url: Option<Cow<'a, str>>,
}

fn lenient<'de: 'a, 'a, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Cow<'a, str>>, D::Error> {
    LenientStr::deserialize(d).map(|s| s.0)
}

/// A string, or `None` for any other JSON value (which is skipped whole).
pub struct LenientStr<'a>(pub Option<Cow<'a, str>>);

impl<'de: 'a, 'a> Deserialize<'de> for LenientStr<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LenientStr<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<LenientStr<'de>, E> {
                Ok(LenientStr(Some(Cow::Borrowed(s))))
            }
            fn visit_str<E>(self, s: &str) -> Result<LenientStr<'de>, E> {
                Ok(LenientStr(Some(Cow::Owned(s.to_string()))))
            }
            fn visit_string<E>(self, s: String) -> Result<LenientStr<'de>, E> {
                Ok(LenientStr(Some(Cow::Owned(s))))
            }
            fn visit_map<M: MapAccess<'de>>(self, m: M) -> Result<LenientStr<'de>, M::Error> {
                drain_map(m).map(|()| LenientStr(None))
            }
            fn visit_seq<S: SeqAccess<'de>>(self, s: S) -> Result<LenientStr<'de>, S::Error> {
                drain_seq(s).map(|()| LenientStr(None))
            }
            fn visit_bool<E>(self, _: bool) -> Result<LenientStr<'de>, E> {
                Ok(LenientStr(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<LenientStr<'de>, E> {
                Ok(LenientStr(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<LenientStr<'de>, E> {
                Ok(LenientStr(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<LenientStr<'de>, E> {
                Ok(LenientStr(None))
            }
            fn visit_unit<E>(self) -> Result<LenientStr<'de>, E> {
                Ok(LenientStr(None))
            }
        }
        d.deserialize_any(V)
    }
}

fn drain_map<'de, M: MapAccess<'de>>(mut m: M) -> Result<(), M::Error> {
    while m.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(())
}

fn drain_seq<'de, S: SeqAccess<'de>>(mut s: S) -> Result<(), S::Error> {
    while s.next_element::<IgnoredAny>()?.is_some() {}
    Ok(())
}

/// Writes `field` into every post of a body: the JSON text `snapshots`
/// holds for the post's `userId`, `null` when it holds none. The body is
/// not rebuilt: each post's text gets the field written over its old value,
/// or appended after its last entry (`Plan`), so the cost is a scan and a
/// copy whether or not the posts already carry the field.
pub fn splice_snapshots(
    body: &str,
    field: &str,
    snapshots: &HashMap<String, String>,
) -> Result<String, String> {
    Ok(Plan::new(body, field)?.splice(body, snapshots))
}

/// Parses a body, with an error a policy can hand back to the proxy.
pub fn parse(body: &str) -> Result<Value, String> {
    serde_json::from_str(body).map_err(|e| format!("body is not JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fast_reader_agrees_with_the_full_one() {
        for body in [
            r#"{"posts":[{"userId":"a","x":{"deep":[1,2]}},{"userId":"b"},{"userId":"a"},{"id":"no-author"}]}"#,
            r#"{"type":"new-post","post":{"userId":"c","text":"esc\"aped"}}"#,
            r#"{"id":"p1","userId":"d"}"#,
            r#"{"other":true}"#,
            r#"{"posts":[{"userId":7},{"userId":"b"},"text",null,{"userId":{"x":1}},[1]]}"#,
            r#"{"posts":"not a list","userId":"z"}"#,
            r#"{"post":42}"#,
            r#"{"userId":"a","userId":"b"}"#,
            r#"{"posts":[{"userId":"a","userId":"b"}]}"#,
        ] {
            let mut doc = parse(body).unwrap();
            assert_eq!(author_ids_of(body).unwrap(), author_ids(&mut doc), "{body}");
        }
        assert!(author_ids_of("[1,2]").is_err());
    }

    /// One post with a numeric author must not cost the rest of the feed
    /// its snapshots.
    #[test]
    fn a_post_it_cannot_read_is_skipped_not_fatal() {
        let body = r#"{"posts":[{"userId":7},{"userId":"b"}]}"#;
        assert_eq!(author_ids_of(body).unwrap(), vec!["b"]);
        let snapshots: HashMap<String, String> = [("b".to_string(), "{}".to_string())].into();
        let out: Value =
            serde_json::from_str(&splice_snapshots(body, "s", &snapshots).unwrap()).unwrap();
        assert_eq!(out["posts"][0]["s"], Value::Null);
        assert_eq!(out["posts"][1]["s"], serde_json::json!({}));
        let f: SnapshotFields =
            serde_json::from_str(r#"{"displayName":5,"avatarUrl":"u"}"#).unwrap();
        assert_eq!((f.display_name, f.avatar_url.as_deref()), (None, Some("u")));
    }

    /// The splice must give what a full parse-insert-serialize gives.
    #[test]
    fn splicing_matches_the_full_rewrite() {
        let snapshots: HashMap<String, String> =
            [("a".to_string(), r#"{"id":"a","n":1}"#.to_string())].into();
        let snap = |id: Option<&str>| {
            id.and_then(|i| snapshots.get(i).cloned())
                .unwrap_or_else(|| "null".to_string())
        };
        for body in [
            r#"{"posts":[{"id":1,"userId":"a"},{"id":2,"userId":"b"},{},{"userId":"a","userSnapshot":{"old":true}}],"next":2}"#,
            r#"{"type":"new-post","post":{"userId":"a","text":"x \"y\" }"}}"#,
            r#"{"id":"p1","userId":"a"}"#,
            r#"{"other":true}"#,
            r#"{"posts":"not a list"}"#,
            r#" { "posts" : [ { "userId" : "a" } ] } "#,
            r#"{"posts":[{"userId":7},{"userId":"a"},3,"x"]}"#,
            r#"{"posts":[{"userId":"b","userId":"a"}]}"#,
        ] {
            let spliced: Value =
                serde_json::from_str(&splice_snapshots(body, "userSnapshot", &snapshots).unwrap())
                    .unwrap();
            let mut full = parse(body).unwrap();
            for post in posts_mut(&mut full) {
                let s = snap(post.get("userId").and_then(Value::as_str));
                post.insert("userSnapshot".into(), serde_json::from_str(&s).unwrap());
            }
            assert_eq!(spliced, full, "{body}");
        }
        assert!(splice_snapshots("[1]", "f", &snapshots).is_err());
    }

    #[test]
    fn finds_posts_in_every_shape() {
        let mut feed =
            parse(r#"{"posts":[{"userId":"a"},{"userId":"b"},{"userId":"a"}]}"#).unwrap();
        assert_eq!(author_ids(&mut feed), vec!["a", "b"]);
        let mut note = parse(r#"{"type":"new-post","post":{"userId":"c"}}"#).unwrap();
        assert_eq!(author_ids(&mut note), vec!["c"]);
        let mut single = parse(r#"{"id":"p1","userId":"d"}"#).unwrap();
        assert_eq!(author_ids(&mut single), vec!["d"]);
        let mut other = parse(r#"[1,2]"#).unwrap();
        assert!(author_ids(&mut other).is_empty());
    }
}
