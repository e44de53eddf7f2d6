//! `POST /admin/warm` (README "Admin listener"): loads a list of ids
//! through the tiers now, e.g. before traffic is moved to a fresh instance.
//! The body is checked whole before anything is loaded, so a bad request
//! loads nothing: `{"ids": [...]}` of strings matching `profiles.id_pattern`
//! (400 naming `ids` or `ids[i]`, the index as sent), at most
//! `MAX_WARM_IDS` distinct ones (else 413, as for the batch route).
//! Duplicates are loaded once.

use std::collections::HashSet;

use serde_json::{json, Value};

use crate::config::MAX_WARM_IDS;
use crate::http::error::ProxyError;
use crate::lookup::IdRules;
use crate::state::State;
use crate::warm_up::Source;

/// A checked warm-up request.
#[derive(Debug, PartialEq, Eq)]
pub struct WarmRequest {
    /// Ids in the body as sent, duplicates included.
    pub requested: usize,
    /// Distinct ids, first occurrence first.
    pub ids: Vec<String>,
}

/// Checks a `POST /admin/warm` body.
pub fn parse(body: &[u8], rules: &IdRules) -> Result<WarmRequest, ProxyError> {
    let text = std::str::from_utf8(body).map_err(|e| {
        ProxyError::BadRequest(format!(
            "body is not UTF-8 (invalid byte at offset {})",
            e.valid_up_to()
        ))
    })?;
    let value: Value = serde_json::from_str(text)
        .map_err(|e| ProxyError::BadRequest(format!("body is not JSON: {e}")))?;
    let Some(object) = value.as_object() else {
        return Err(ProxyError::BadRequest(
            "body must be a JSON object: {\"ids\": [\"<id>\", ...]}".into(),
        ));
    };
    let list = match object.get("ids") {
        None | Some(Value::Null) => {
            return Err(ProxyError::BadRequest(
                "field `ids` (an array of id strings) is required".into(),
            ))
        }
        Some(Value::Array(list)) => list,
        Some(other) => {
            return Err(ProxyError::BadRequest(format!(
                "field `ids` must be an array of id strings, not {}",
                json_kind(other)
            )))
        }
    };
    let mut seen = HashSet::with_capacity(list.len());
    let mut distinct: Vec<(usize, &str)> = Vec::new();
    for (i, item) in list.iter().enumerate() {
        let Some(id) = item.as_str() else {
            return Err(ProxyError::BadRequest(format!(
                "ids[{i}] must be a string id, not {}",
                json_kind(item)
            )));
        };
        if seen.insert(id) {
            distinct.push((i, id));
        }
    }
    if distinct.len() > MAX_WARM_IDS {
        return Err(ProxyError::PayloadTooLarge(format!(
            "`ids` holds {} distinct ids; one warm-up takes at most {MAX_WARM_IDS}",
            distinct.len()
        )));
    }
    for (i, id) in &distinct {
        rules
            .check(&format!("ids[{i}]"), id)
            .map_err(crate::routes::profile::id_error)?;
    }
    Ok(WarmRequest {
        requested: list.len(),
        ids: distinct.into_iter().map(|(_, id)| id.to_string()).collect(),
    })
}

/// Handles one body: checks it, loads the ids, answers with the counts.
pub async fn handle(state: &State, body: &[u8]) -> Result<Value, ProxyError> {
    let request = parse(body, &state.profiles.ids())?;
    let tally = state.warm_up.warm(&request.ids, Source::Admin).await;
    let mut answer = tally.json();
    answer["requested"] = json!(request.requested);
    answer["distinct"] = json!(request.ids.len());
    Ok(answer)
}

/// What a JSON value is, in the words of an error message.
fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use regex::Regex;

    use super::*;

    fn rules() -> IdRules {
        // max_request_ids (the batch route's limit) does not apply here.
        IdRules::new(Regex::new("^[a-z0-9]{1,8}$").expect("regex"), 1)
    }

    fn refused(body: &str) -> ProxyError {
        match parse(body.as_bytes(), &rules()) {
            Err(e) => e,
            Ok(r) => panic!("{body}: accepted as {r:?}"),
        }
    }

    fn bad_request(body: &str) -> String {
        match refused(body) {
            ProxyError::BadRequest(d) => d,
            other => panic!("{body}: expected 400, got {other:?}"),
        }
    }

    #[test]
    fn duplicates_fold_in_order_and_the_count_as_sent_is_kept() {
        let r = parse(br#"{"ids":["b","a","b","c","a"],"note":1}"#, &rules()).expect("ok");
        assert_eq!(r.requested, 5);
        assert_eq!(r.ids, vec!["b", "a", "c"]);
        let empty = parse(br#"{"ids":[]}"#, &rules()).expect("ok");
        assert_eq!((empty.requested, empty.ids.len()), (0, 0));
    }

    #[test]
    fn each_refusal_names_the_field() {
        assert!(bad_request("{}").contains("`ids`"));
        assert!(bad_request(r#"{"ids":null}"#).contains("`ids`"));
        assert!(bad_request(r#"{"ids":"a"}"#).contains("`ids` must be an array"));
        assert!(bad_request(r#"{"ids":{"0":"a"}}"#).contains("not an object"));
        assert!(bad_request(r#"{"ids":["a","b",7]}"#).contains("ids[2] must be a string"));
        assert!(bad_request(r#"{"ids":["a",["b"]]}"#).contains("ids[1]"));
        // The index is the one in the body, duplicates counted.
        assert_eq!(
            bad_request(r#"{"ids":["a","a","a","NO"]}"#),
            "ids[3] = \"NO\" does not match profiles.id_pattern"
        );
        assert!(bad_request(r#"{"ids":["a",".."]}"#).contains("ids[1]"));
        assert!(bad_request(r#"["a"]"#).contains("JSON object"));
        assert!(bad_request("{").contains("not JSON"));
        match parse(b"{\"ids\":[\"\xff\"]}", &rules()) {
            Err(ProxyError::BadRequest(d)) => assert!(d.contains("UTF-8"), "{d}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn more_than_the_limit_of_distinct_ids_is_413_and_duplicates_do_not_count() {
        let many: Vec<String> = (0..=MAX_WARM_IDS).map(|i| format!("{i:x}")).collect();
        let body = serde_json::to_vec(&json!({ "ids": many })).expect("json");
        match parse(&body, &rules()) {
            Err(ProxyError::PayloadTooLarge(d)) => {
                assert!(
                    d.contains("`ids`") && d.contains(&MAX_WARM_IDS.to_string()),
                    "{d}"
                )
            }
            other => panic!("{other:?}"),
        }
        let same = vec!["a"; MAX_WARM_IDS + 5];
        let body = serde_json::to_vec(&json!({ "ids": same })).expect("json");
        let r = parse(&body, &rules()).expect("one distinct id");
        assert_eq!((r.requested, r.ids.len()), (MAX_WARM_IDS + 5, 1));
    }
}
