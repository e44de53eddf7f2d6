//! plugins/post-shape, the enrichment glue: never panics on any text. For a
//! body that is JSON, the fast author reader agrees with the full one
//! (`author_ids_of` == `author_ids(parse)`) and the splice agrees with the
//! full rewrite (parse, set the snapshot or null on each post of
//! `posts_mut`, compare values), as the crate's unit tests
//! `the_fast_reader_agrees_with_the_full_one` and
//! `splicing_matches_the_full_rewrite` do for their fixed bodies.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use post_shape::{author_ids, author_ids_of, parse, posts_mut, splice_snapshots};
use serde_json::Value;

/// Field names to splice; `userId` (overwriting the author) and an escaped
/// name exercise the key handling.
const FIELDS: &[&str] = &["userSnapshot", "userId", "posts", "post", "", "a\"b\\c"];
/// Snapshot texts, as the host hands them over (JSON).
const SNAPSHOTS: &[&str] = &[
    r#"{"id":"a","n":1}"#,
    "null",
    "[1,{\"x\":2}]",
    "\"s\"",
    "{}",
    "-1.5e3",
];

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let body = String::from_utf8_lossy(rest);
    let body = body.as_ref();
    let field = FIELDS[usize::from(sel & 7) % FIELDS.len()];

    // Whatever the body, none of these panic.
    let fast = author_ids_of(body);
    let parsed = parse(body);

    // Snapshots for some of the authors the full reader finds (chosen by
    // the selector's high bits), and always for "a".
    let mut snapshots: HashMap<String, String> = HashMap::new();
    snapshots.insert("a".into(), SNAPSHOTS[0].into());
    if let Ok(doc) = &parsed {
        for (i, id) in author_ids(&mut doc.clone()).into_iter().enumerate() {
            let pick = (usize::from(sel >> 3) + i) % (SNAPSHOTS.len() + 1);
            if let Some(s) = SNAPSHOTS.get(pick) {
                snapshots.insert(id, (*s).to_string());
            }
        }
    }
    let spliced = splice_snapshots(body, field, &snapshots);

    let Ok(doc) = parsed else {
        return;
    };
    if !doc.is_object() {
        assert!(
            fast.is_err(),
            "author_ids_of read a non-object body: {fast:?}"
        );
        assert!(spliced.is_err(), "splice_snapshots took a non-object body");
        return;
    }

    let mut full = doc.clone();
    assert_eq!(
        fast,
        Ok(author_ids(&mut full)),
        "fast and full readers disagree"
    );

    let spliced = spliced.expect("splice_snapshots takes any JSON object");
    let spliced: Value = serde_json::from_str(&spliced)
        .unwrap_or_else(|e| panic!("splice output is not JSON ({e}): {spliced}"));
    let mut full = doc;
    for post in posts_mut(&mut full) {
        let s = post
            .get("userId")
            .and_then(Value::as_str)
            .and_then(|id| snapshots.get(id))
            .map_or("null", String::as_str);
        post.insert(
            field.to_string(),
            serde_json::from_str(s).expect("snapshot is JSON"),
        );
    }
    assert_eq!(spliced, full, "splice differs from the full rewrite");
});
