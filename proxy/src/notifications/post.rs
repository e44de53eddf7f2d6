//! What counts as a post, whichever way it arrives (`POST
//! /admin/notifications`, a `new-posts` change stream): a JSON object whose
//! `userId` is a string the id rules accept. The checks name the field,
//! so an operator can tell what to fix.

use serde_json::{Map, Value};

use crate::lookup::IdRules;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BadPost {
    #[error("field `{0}.userId` (the author's id) is required")]
    NoAuthor(&'static str),
    #[error("field `{0}.userId` = {1} must be a string id matching profiles.id_pattern")]
    AuthorNotAString(&'static str, String),
    /// The id rules' own words, which name the field.
    #[error("field {0}")]
    BadAuthor(String),
}

/// Checks a post; `name` is how the caller's input calls it (`post`).
/// Answers the author's id.
pub fn author<'a>(
    name: &'static str,
    post: &'a Map<String, Value>,
    ids: &IdRules,
) -> Result<&'a str, BadPost> {
    match post.get("userId") {
        Some(Value::String(id)) => match ids.check(&format!("{name}.userId"), id) {
            Ok(()) => Ok(id),
            Err(e) => Err(BadPost::BadAuthor(e.to_string())),
        },
        Some(other) => {
            let shown: String = other.to_string().chars().take(64).collect();
            Err(BadPost::AuthorNotAString(name, shown))
        }
        None => Err(BadPost::NoAuthor(name)),
    }
}

#[cfg(test)]
mod tests {
    use regex::Regex;
    use serde_json::json;

    use super::*;

    #[test]
    fn the_author_is_named_when_wrong() {
        let ids = IdRules::new(Regex::new("^[a-z0-9]{1,8}$").expect("regex"), 10);
        let check = |v: Value| {
            let Value::Object(m) = v else { panic!() };
            author("post", &m, &ids).map(str::to_string)
        };
        assert_eq!(check(json!({"userId": "u1"})), Ok("u1".into()));
        assert_eq!(check(json!({})), Err(BadPost::NoAuthor("post")));
        assert!(
            matches!(check(json!({"userId": 7})), Err(BadPost::AuthorNotAString("post", v)) if v == "7")
        );
        assert!(
            matches!(check(json!({"userId": "../x"})), Err(BadPost::BadAuthor(w)) if w.contains("post.userId"))
        );
    }
}
