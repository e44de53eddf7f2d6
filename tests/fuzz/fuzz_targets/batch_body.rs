//! `routes::batch::parse_body`: never panics; an accepted body gives its
//! `ids`, first occurrences in order, at most max, each valid and safe.
#![no_main]

use libfuzzer_sys::fuzz_target;
use profile_edge::http::error::ProxyError;
use profile_edge::routes::batch::parse_body;
use profile_edge_fuzz::{all_distinct, is_path_safe, reference_dedup, rules_from};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let (rules, max) = rules_from(selector);
    match parse_body(body, &rules) {
        Ok(ids) => {
            assert!(all_distinct(&ids), "duplicates in {ids:?}");
            assert!(ids.len() <= max, "{} ids > max {max}", ids.len());
            for id in &ids {
                assert!(
                    rules.check("id", id).is_ok() && is_path_safe(id),
                    "invalid id {id:?}"
                );
            }
            // serde_json checks less in what it skips (unknown fields) than
            // a `Value` needs: neither UTF-8 inside skipped strings
            // ({"ids":[],"":"\xf3"}) nor the f64 range of skipped numbers
            // ({"ids":[],"x":1e400}). Such a body is accepted, its ids
            // checked above; the ids are compared when a `Value` can be built.
            let Ok(doc) = serde_json::from_slice::<Value>(body) else {
                return;
            };
            // serde's derived struct also reads the sequence form, so
            // [["a","b"]] is accepted like {"ids":["a","b"]}.
            let list = match &doc {
                Value::Array(fields) => &fields[0],
                _ => &doc["ids"],
            };
            let asked: Vec<String> = list
                .as_array()
                .expect("an accepted body has an ids array")
                .iter()
                .map(|v| v.as_str().expect("ids are strings").to_string())
                .collect();
            assert_eq!(ids, reference_dedup(&asked));
        }
        Err(ProxyError::BadRequest(_) | ProxyError::PayloadTooLarge(_)) => {}
        Err(e) => panic!("a body is a 400 or 413, not {e:?}"),
    }
});
