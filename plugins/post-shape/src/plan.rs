//! Where the posts of a body are, found in one validating scan (`scan`):
//! for each post its author (`userId`) and where a field goes, as byte
//! offsets. `needed-ids` reads the authors from it; `enrich` writes each
//! post's snapshot into the body's own text: over the field's old value
//! when the post has one (every occurrence, when a key is repeated), else
//! appended after the post's last entry. Nothing is parsed into a tree or
//! printed again, so a post that already carries a stale snapshot costs
//! what one without it costs.
//!
//! The shapes and their precedence are those of `posts_mut`: a top-level
//! `posts` array, else a `post` object, else the body itself when it has a
//! `userId`. Like `serde_json::Value`, a repeated key counts by its last
//! occurrence (for the authors); the field is written into every
//! occurrence, so the rewritten body reads the same whichever one a client
//! keeps.

use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::Range;

use crate::scan::{same_bytes, Result, Scanner, Str};

/// One post: its author (a string `userId`, the last one), and where the
/// field goes.
#[derive(Clone, Debug)]
struct Post {
    author: Option<Author>,
    /// Indices into `Plan::edits`.
    edits: Range<usize>,
}

/// An author id: as written, or unescaped when it had escapes.
#[derive(Clone, Debug)]
enum Author {
    At(Range<usize>),
    Owned(String),
}

/// A change to the body's text: replace `at` with the post's snapshot
/// (`at` is the old value), or insert the whole entry at `at.start`
/// (`at` empty), after a comma unless the post had no entries.
#[derive(Clone, Debug)]
struct Edit {
    at: Range<usize>,
    insert: Option<Insert>,
}

#[derive(Clone, Copy, Debug)]
enum Insert {
    First,
    After,
}

/// The posts of one shape, as the scan finds them.
#[derive(Default)]
struct Group {
    posts: Vec<Post>,
    edits: Vec<Edit>,
    /// Where the posts of the key's last occurrence start in `posts` (the
    /// authors `needed-ids` names).
    last_from: usize,
    /// The shape's key was seen.
    seen: bool,
}

/// A body's posts, authors and field positions. Holds offsets only: it
/// reads `body` again for ids and text, and belongs to that body (the
/// same text it was built from).
#[derive(Default)]
pub struct Plan {
    /// `None`: scanned for the authors only.
    field: Option<String>,
    posts: Vec<Post>,
    edits: Vec<Edit>,
    /// Where the authors `needed-ids` names start in `posts`.
    ids_from: usize,
    /// No shape matched: the body goes back unchanged.
    untouched: bool,
}

/// What the scan of one post records.
struct PostScan {
    author: Option<Author>,
    /// A `userId` key was seen (whatever its value): for the body-is-one-
    /// post shape, which needs one.
    has_user_id: bool,
    edits_from: usize,
}

impl PostScan {
    fn new(group: &Group) -> PostScan {
        PostScan {
            author: None,
            has_user_id: false,
            edits_from: group.edits.len(),
        }
    }
}

impl Plan {
    /// Scans `body` (which must be a JSON object) once, noting where
    /// `field` is (or goes) in each post.
    pub fn new(body: &str, field: &str) -> std::result::Result<Plan, String> {
        Plan::scan(body, Some(field))
    }

    /// Scans `body` for its authors only (`author_ids`; `splice` then
    /// writes nothing).
    pub fn authors(body: &str) -> std::result::Result<Plan, String> {
        Plan::scan(body, None)
    }

    fn scan(body: &str, field: Option<&str>) -> std::result::Result<Plan, String> {
        Plan::read(body, field).map_err(|e| format!("body is not a posts document: {e}"))
    }

    fn read(body: &str, field: Option<&str>) -> Result<Plan> {
        let mut s = Scanner::new(body);
        // Each shape's posts, collected at once: which shape applies is
        // known only when the whole body has been read.
        let (mut feed, mut single, mut top) =
            (Group::default(), Group::default(), Group::default());
        let mut top_post = PostScan::new(&top);
        let end = s.object(|s, key| {
            if s.is(&key, "posts")? {
                feed.seen = true;
                feed.last_from = feed.posts.len();
                if s.peek() == Some(b'[') {
                    return s.array(|s| {
                        if s.peek() == Some(b'{') {
                            post(s, field, &mut feed)
                        } else {
                            s.value()
                        }
                    });
                }
            } else if s.is(&key, "post")? {
                single.seen = true;
                single.last_from = single.posts.len();
                if s.peek() == Some(b'{') {
                    return post(s, field, &mut single);
                }
            } else if entry(s, &key, field, &mut top, &mut top_post)? {
                return Ok(());
            }
            s.value()
        })?;
        s.end()?;
        let (group, untouched) = if feed.seen {
            (feed, false)
        } else if single.seen {
            (single, false)
        } else {
            let untouched = !top_post.has_user_id;
            finish_post(&mut top, top_post, end.append_at, end.empty);
            (top, untouched)
        };
        Ok(Plan {
            field: field.map(str::to_string),
            posts: group.posts,
            edits: group.edits,
            ids_from: group.last_from,
            untouched,
        })
    }

    /// The distinct authors, in order of appearance.
    pub fn author_ids(&self, body: &str) -> Vec<String> {
        let mut ids: Vec<String> = Vec::new();
        if self.untouched {
            return ids;
        }
        for p in &self.posts[self.ids_from..] {
            if let Some(id) = p.author.as_ref().map(|a| a.text(body)) {
                if !ids.iter().any(|x| same_bytes(x.as_bytes(), id.as_bytes())) {
                    ids.push(id.to_string());
                }
            }
        }
        ids
    }

    /// `body` with the field of every post set to the JSON text
    /// `snapshots` holds for its author, `null` when it holds none.
    pub fn splice(&self, body: &str, snapshots: &HashMap<String, String>) -> String {
        let Some(field) = self.field.as_deref().filter(|_| !self.untouched) else {
            return body.to_string();
        };
        let key = serde_json::to_string(field).unwrap_or_default();
        let snaps: Vec<&str> = self
            .posts
            .iter()
            .map(|p| {
                p.author
                    .as_ref()
                    .and_then(|a| snapshots.get(a.text(body)))
                    .map_or("null", String::as_str)
            })
            .collect();
        let added: usize = self
            .posts
            .iter()
            .zip(&snaps)
            .map(|(p, s)| p.edits.len() * (s.len() + key.len() + 2))
            .sum();
        let mut out = String::with_capacity(body.len() + added);
        let mut copied = 0;
        for (p, snap) in self.posts.iter().zip(&snaps) {
            for e in &self.edits[p.edits.clone()] {
                out.push_str(&body[copied..e.at.start]);
                match e.insert {
                    None => {}
                    Some(Insert::After) => {
                        out.push(',');
                        out.push_str(&key);
                        out.push(':');
                    }
                    Some(Insert::First) => {
                        out.push_str(&key);
                        out.push(':');
                    }
                }
                out.push_str(snap);
                copied = e.at.end;
            }
        }
        out.push_str(&body[copied..]);
        out
    }
}

impl Author {
    fn text<'b>(&'b self, body: &'b str) -> &'b str {
        match self {
            Author::At(r) => &body[r.clone()],
            Author::Owned(s) => s,
        }
    }
}

/// A post object (the scanner at its `{`).
fn post(s: &mut Scanner, field: Option<&str>, group: &mut Group) -> Result<()> {
    let mut scan = PostScan::new(group);
    let end = s.object(|s, key| {
        if !entry(s, &key, field, group, &mut scan)? {
            s.value()?;
        }
        Ok(())
    })?;
    finish_post(group, scan, end.append_at, end.empty);
    Ok(())
}

/// Reads the value of `key` when it is the author or the field (true);
/// false when it is neither, and the value is still to be read.
fn entry(
    s: &mut Scanner,
    key: &Str,
    field: Option<&str>,
    group: &mut Group,
    scan: &mut PostScan,
) -> Result<bool> {
    let is_author = s.is(key, "userId")?;
    let is_field = match field {
        Some(f) => s.is(key, f)?,
        None => false,
    };
    if !is_author && !is_field {
        return Ok(false);
    }
    s.ws();
    let start = s.pos();
    if is_author {
        scan.has_user_id = true;
        // The last `userId` counts; one that is not a string names no one.
        scan.author = if s.peek() == Some(b'"') {
            let id = s.string()?;
            Some(match s.decode(&id)? {
                Cow::Borrowed(_) => Author::At(id.text),
                Cow::Owned(o) => Author::Owned(o),
            })
        } else {
            s.value()?;
            None
        };
    } else {
        s.value()?;
    }
    if is_field {
        group.edits.push(Edit {
            at: start..s.pos(),
            insert: None,
        });
    }
    Ok(true)
}

/// Records a post once its object is read: the field is appended when the
/// post had none.
fn finish_post(group: &mut Group, scan: PostScan, append_at: usize, empty: bool) {
    if group.edits.len() == scan.edits_from {
        group.edits.push(Edit {
            at: append_at..append_at,
            insert: Some(if empty { Insert::First } else { Insert::After }),
        });
    }
    group.posts.push(Post {
        author: scan.author,
        edits: scan.edits_from..group.edits.len(),
    });
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::{author_ids, parse, posts_mut};

    /// What `splice` must give: the post read into a tree, the field set,
    /// (compared as trees, so formatting and key order do not count).
    fn full_rewrite(body: &str, field: &str, snapshots: &HashMap<String, String>) -> Value {
        let mut doc = parse(body).unwrap();
        for post in posts_mut(&mut doc) {
            let snap = post
                .get("userId")
                .and_then(Value::as_str)
                .and_then(|id| snapshots.get(id))
                .map_or("null", String::as_str);
            post.insert(field.into(), serde_json::from_str(snap).unwrap());
        }
        doc
    }

    const BODIES: &[&str] = &[
        // Stale snapshots, `null` ones, none, in any position.
        r#"{"posts":[{"id":1,"userId":"a","userSnapshot":{"id":"a","displayName":"Old"}},{"userSnapshot":null,"userId":"b","text":"t"},{"userId":"c"}],"nextOffset":20}"#,
        r#"{"posts":[{"userSnapshot":{"nested":{"userSnapshot":1,"userId":"x"}},"userId":"a"}]}"#,
        // Repeated keys: every occurrence of the field is written, the last
        // `userId` names the author, the last `posts` the authors.
        r#"{"posts":[{"userId":"b","userSnapshot":1,"userId":"a","userSnapshot":[2]}]}"#,
        r#"{"posts":[{"userId":"a"}],"posts":[{"userId":"b","userSnapshot":false}]}"#,
        r#"{"posts":[{"userId":"a"}],"posts":"gone"}"#,
        // Whitespace, escapes, empty posts, posts that are not objects.
        " \n{ \"posts\" : [ { } , { \"userId\" : \"a\" , \"userSnapshot\" : { \"x\" : [ ] } } ,\t{\"userId\":\"a\"} ] } \n",
        r#"{"posts":[{"user\u0049d":"\u0061","userSnapsho\u0074":0},{"userId":"a\"b"}]}"#,
        r#"{"posts":[1,"s",null,[{"userId":"a"}],{"userId":7,"userSnapshot":{}}]}"#,
        r#"{"posts":[]}"#,
        // The other shapes.
        r#"{"type":"new-post","post":{"userId":"a","userSnapshot":"stale"}}"#,
        r#"{"post":{}}"#,
        r#"{"post":[{"userId":"a"}]}"#,
        r#"{"id":"p1","userId":"c","userSnapshot":{"id":"c"}}"#,
        r#"{"id":"p1","userId":null}"#,
        r#"{"userSnapshot":{"id":"c"}}"#,
        r#"{}"#,
        r#"{"posts":{"userId":"a"},"post":{"userId":"a"},"userId":"a"}"#,
    ];

    #[test]
    fn splicing_matches_the_full_rewrite_over_stale_snapshots() {
        let snapshots: HashMap<String, String> = [
            (
                "a".to_string(),
                r#"{"id":"a","displayName":"A"}"#.to_string(),
            ),
            ("c".to_string(), r#"{"id":"c","n":[1,2]}"#.to_string()),
            ("a\"b".to_string(), "true".to_string()),
        ]
        .into();
        for body in BODIES {
            let plan = Plan::new(body, "userSnapshot").unwrap();
            let spliced = plan.splice(body, &snapshots);
            let read: Value = serde_json::from_str(&spliced)
                .unwrap_or_else(|e| panic!("{body}\n-> {spliced}\n{e}"));
            assert_eq!(
                read,
                full_rewrite(body, "userSnapshot", &snapshots),
                "{body}\n-> {spliced}"
            );
            // The authors, from the same scan.
            let mut doc = parse(body).unwrap();
            assert_eq!(plan.author_ids(body), author_ids(&mut doc), "{body}");
        }
    }

    /// Every byte outside the edited values is kept as the upstream wrote it.
    #[test]
    fn only_the_field_changes() {
        let body = "{\"posts\":[ {\"userId\":\"a\",\"userSnapshot\":{\"old\":1} ,\"t\":\"x\"},{\"userId\":\"zz\"} ],\"n\":1}";
        let snaps: HashMap<String, String> = [("a".to_string(), "{\"new\":2}".to_string())].into();
        assert_eq!(
            splice_ok(body, &snaps),
            "{\"posts\":[ {\"userId\":\"a\",\"userSnapshot\":{\"new\":2} ,\"t\":\"x\"},{\"userId\":\"zz\",\"userSnapshot\":null} ],\"n\":1}"
        );
        let empty = "{\"post\":{ }}";
        assert_eq!(
            splice_ok(empty, &snaps),
            "{\"post\":{ \"userSnapshot\":null}}"
        );
        let other = " {\"other\":[1]} ";
        assert_eq!(splice_ok(other, &snaps), other);
    }

    fn splice_ok(body: &str, snaps: &HashMap<String, String>) -> String {
        Plan::new(body, "userSnapshot").unwrap().splice(body, snaps)
    }

    /// A field named like the author is the author, and gets written.
    #[test]
    fn a_field_may_be_the_author_key() {
        let snaps: HashMap<String, String> = [("a".to_string(), "\"A\"".to_string())].into();
        let body = r#"{"posts":[{"userId":"a"},{"x":1}]}"#;
        let out: Value =
            serde_json::from_str(&Plan::new(body, "userId").unwrap().splice(body, &snaps)).unwrap();
        assert_eq!(out, full_rewrite(body, "userId", &snaps));
    }

    #[test]
    fn bodies_that_are_not_posts_documents_are_refused() {
        for body in [
            "[1]",
            "",
            r#"{"posts":[{"userId":"a"}]"#,
            r#"{"posts":[{"userId":"a",}]}"#,
            r#"{"posts":[]} []"#,
            r#"{"posts":[{"userId":"\ud800"}]}"#,
            r#"{"user\ud800Id":1}"#,
        ] {
            assert!(Plan::new(body, "userSnapshot").is_err(), "{body}");
            assert!(
                serde_json::from_str::<Value>(body).is_err() || !body.starts_with('{'),
                "serde_json reads {body}"
            );
        }
    }
}
