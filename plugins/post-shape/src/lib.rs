//! The shapes of Posts API bodies an enrichment policy meets: a feed
//! (`{"posts": [...]}`), a new-post notification (`{"post": {...}}`), or a
//! single post (an object with `userId`).

use std::borrow::Cow;
use std::collections::HashMap;

use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

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

/// Only the fields that name authors; everything else in the body is
/// skipped without being built, which is most of `needed-ids`' time saved.
/// Read leniently: a post whose `userId` is not a string (or that is not an
/// object) names no author, and the rest of the feed is still enriched.
/// Like `serde_json::Value`, a repeated key counts by its last occurrence.
#[derive(Default)]
struct Shape<'a> {
    posts: Option<Vec<Option<Cow<'a, str>>>>,
    post: Option<Option<Cow<'a, str>>>,
    user_id: Option<Option<Cow<'a, str>>>,
}

impl<'de: 'a, 'a> Deserialize<'de> for Shape<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Shape<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut m: M) -> Result<Shape<'de>, M::Error> {
                let mut shape = Shape::default();
                while let Some(key) = m.next_key::<Cow<'de, str>>()? {
                    match key.as_ref() {
                        "posts" => shape.posts = Some(m.next_value::<Posts>()?.0),
                        "post" => shape.post = Some(m.next_value::<Author>()?.0),
                        "userId" => shape.user_id = Some(m.next_value::<LenientStr>()?.0),
                        _ => {
                            m.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(shape)
            }
        }
        d.deserialize_map(V)
    }
}

/// The authors of a `posts` value: one entry per element when it is an
/// array, none when it is anything else.
struct Posts<'a>(Vec<Option<Cow<'a, str>>>);

impl<'de: 'a, 'a> Deserialize<'de> for Posts<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Posts<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_seq<S: SeqAccess<'de>>(self, mut s: S) -> Result<Posts<'de>, S::Error> {
                let mut out = Vec::new();
                while let Some(a) = s.next_element::<Author>()? {
                    out.push(a.0);
                }
                Ok(Posts(out))
            }
            fn visit_map<M: MapAccess<'de>>(self, m: M) -> Result<Posts<'de>, M::Error> {
                drain_map(m).map(|()| Posts(Vec::new()))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Posts<'de>, E> {
                Ok(Posts(Vec::new()))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Posts<'de>, E> {
                Ok(Posts(Vec::new()))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Posts<'de>, E> {
                Ok(Posts(Vec::new()))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Posts<'de>, E> {
                Ok(Posts(Vec::new()))
            }
            fn visit_str<E>(self, _: &str) -> Result<Posts<'de>, E> {
                Ok(Posts(Vec::new()))
            }
            fn visit_unit<E>(self) -> Result<Posts<'de>, E> {
                Ok(Posts(Vec::new()))
            }
        }
        d.deserialize_any(V)
    }
}

/// The `userId` of a post when it is an object with a string `userId`.
struct Author<'a>(Option<Cow<'a, str>>);

impl<'de: 'a, 'a> Deserialize<'de> for Author<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Author<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut m: M) -> Result<Author<'de>, M::Error> {
                let mut id = None;
                while let Some(key) = m.next_key::<Cow<'de, str>>()? {
                    if key == "userId" {
                        id = m.next_value::<LenientStr>()?.0;
                    } else {
                        m.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(Author(id))
            }
            fn visit_seq<S: SeqAccess<'de>>(self, s: S) -> Result<Author<'de>, S::Error> {
                drain_seq(s).map(|()| Author(None))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Author<'de>, E> {
                Ok(Author(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Author<'de>, E> {
                Ok(Author(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Author<'de>, E> {
                Ok(Author(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Author<'de>, E> {
                Ok(Author(None))
            }
            fn visit_str<E>(self, _: &str) -> Result<Author<'de>, E> {
                Ok(Author(None))
            }
            fn visit_unit<E>(self) -> Result<Author<'de>, E> {
                Ok(Author(None))
            }
        }
        d.deserialize_any(V)
    }
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

/// The distinct authors of a body's posts, reading nothing else: the same
/// answer as `author_ids`, for the shapes `posts_mut` knows.
pub fn author_ids_of(body: &str) -> Result<Vec<String>, String> {
    let shape: Shape =
        serde_json::from_str(body).map_err(|e| format!("body is not a posts document: {e}"))?;
    let found: Vec<Cow<str>> = match (shape.posts, shape.post, shape.user_id) {
        (Some(posts), _, _) => posts.into_iter().flatten().collect(),
        (None, Some(post), _) => post.into_iter().collect(),
        (None, None, Some(id)) => id.into_iter().collect(),
        (None, None, None) => Vec::new(),
    };
    let mut ids: Vec<String> = Vec::with_capacity(found.len());
    for id in found {
        if !ids.iter().any(|x| *x == id) {
            ids.push(id.into_owned());
        }
    }
    Ok(ids)
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

/// A JSON object read as its entries, in order, values left as raw text.
struct RawObject<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for RawObject<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entries;
        impl<'de> serde::de::Visitor<'de> for Entries {
            type Value = RawObject<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut m: M,
            ) -> Result<RawObject<'de>, M::Error> {
                let mut out = Vec::new();
                while let Some(entry) = m.next_entry::<Cow<'de, str>, &'de RawValue>()? {
                    out.push(entry);
                }
                Ok(RawObject(out))
            }
        }
        d.deserialize_map(Entries)
    }
}

/// Writes `field` into every post of a body: the JSON text `snapshots`
/// holds for the post's `userId`, `null` when it holds none. The body is not
/// rebuilt: each post's text gets the new field spliced in before its
/// closing brace, so the cost is a scan and a copy. A post that already has
/// the field is rewritten through a full parse, so the field is replaced,
/// never duplicated.
pub fn splice_snapshots(
    body: &str,
    field: &str,
    snapshots: &HashMap<String, String>,
) -> Result<String, String> {
    let top: RawObject =
        serde_json::from_str(body).map_err(|e| format!("body is not a JSON object: {e}"))?;
    let key_json = serde_json::to_string(field).map_err(|e| e.to_string())?;
    let splice = Splice {
        field,
        key_json: &key_json,
        snapshots,
    };
    let has = |k: &str| top.0.iter().any(|(key, _)| key == k);
    if !has("posts") && !has("post") {
        return if has("userId") {
            // A single post: the body itself.
            splice.post_entries(body.trim(), &top)
        } else {
            Ok(body.to_string())
        };
    }
    let target = if has("posts") { "posts" } else { "post" };
    let mut out = String::with_capacity(body.len() + 2048);
    out.push('{');
    for (i, (key, raw)) in top.0.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::to_string(key).map_err(|e| e.to_string())?);
        out.push(':');
        if key != target {
            out.push_str(raw.get());
        } else if target == "post" {
            out.push_str(&splice.post(raw.get())?);
        } else {
            match serde_json::from_str::<Vec<&RawValue>>(raw.get()) {
                Ok(posts) => {
                    out.push('[');
                    for (j, post) in posts.iter().enumerate() {
                        if j > 0 {
                            out.push(',');
                        }
                        out.push_str(&splice.post(post.get())?);
                    }
                    out.push(']');
                }
                // `posts` that is not an array is left as it is.
                Err(_) => out.push_str(raw.get()),
            }
        }
    }
    out.push('}');
    Ok(out)
}

struct Splice<'s> {
    field: &'s str,
    key_json: &'s str,
    snapshots: &'s HashMap<String, String>,
}

impl Splice<'_> {
    fn post(&self, post: &str) -> Result<String, String> {
        let trimmed = post.trim();
        if !trimmed.starts_with('{') {
            return Ok(post.to_string()); // not an object: nothing to enrich
        }
        let entries: RawObject = serde_json::from_str(trimmed).map_err(|e| e.to_string())?;
        self.post_entries(trimmed, &entries)
    }

    /// `text` is a JSON object whose entries are `entries`.
    fn post_entries(&self, text: &str, entries: &RawObject) -> Result<String, String> {
        let author = entries
            .0
            .iter()
            .rev()
            .find(|(k, _)| k == "userId")
            .and_then(|(_, v)| serde_json::from_str::<LenientStr>(v.get()).ok()?.0);
        let snap = author
            .as_deref()
            .and_then(|id| self.snapshots.get(id))
            .map_or("null", String::as_str);
        if entries.0.iter().any(|(k, _)| k == self.field) {
            let mut v: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
            let snap: Value = serde_json::from_str(snap).map_err(|e| e.to_string())?;
            if let Some(o) = v.as_object_mut() {
                o.insert(self.field.to_string(), snap);
            }
            return serde_json::to_string(&v).map_err(|e| e.to_string());
        }
        let inner = text[..text.len() - 1].trim_end();
        let mut out = String::with_capacity(text.len() + self.key_json.len() + snap.len() + 2);
        out.push_str(inner);
        if !entries.0.is_empty() {
            out.push(',');
        }
        out.push_str(self.key_json);
        out.push(':');
        out.push_str(snap);
        out.push('}');
        Ok(out)
    }
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
