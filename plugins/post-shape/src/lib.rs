//! The shapes of Posts API bodies an enrichment policy meets: a feed
//! (`{"posts": [...]}`), a new-post notification (`{"post": {...}}`), or a
//! single post (an object with `userId`).

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

/// Parses a body, with an error a policy can hand back to the proxy.
pub fn parse(body: &str) -> Result<Value, String> {
    serde_json::from_str(body).map_err(|e| format!("body is not JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

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
