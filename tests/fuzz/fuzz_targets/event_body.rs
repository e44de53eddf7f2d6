//! `invalidation::policy::parse`: never panics; an accepted event is a JSON object
//! whose `type` string is `kind`, and whose `userId`, present (always for
//! the profile event types), is a valid, path-safe id.
#![no_main]

use libfuzzer_sys::fuzz_target;
use profile_edge::invalidation::policy::parse;
use profile_edge::http::error::ProxyError;
use profile_edge_fuzz::{is_path_safe, rules_from};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let (rules, _) = rules_from(selector);
    match parse(body, &rules) {
        Ok(ev) => {
            assert_eq!(ev.text.as_bytes(), body, "text is the body as sent");
            let doc: Value = serde_json::from_slice(body).expect("an accepted event is JSON");
            assert!(doc.is_object());
            assert!(!ev.kind.is_empty(), "empty event type accepted");
            assert_eq!(
                doc.get("type").and_then(Value::as_str),
                Some(ev.kind.as_str())
            );
            if ev.kind == "profile-updated" || ev.kind == "profile-deleted" {
                assert!(ev.user_id.is_some(), "{} without userId", ev.kind);
            }
            match &ev.user_id {
                Some(id) => {
                    assert!(
                        rules.check("userId", id).is_ok() && is_path_safe(id),
                        "invalid userId {id:?}"
                    );
                    assert_eq!(doc.get("userId").and_then(Value::as_str), Some(id.as_str()));
                }
                None => assert!(matches!(doc.get("userId"), None | Some(Value::Null))),
            }
        }
        Err(ProxyError::BadRequest(_)) => {}
        Err(e) => panic!("a bad event is a 400, not {e:?}"),
    }
});
