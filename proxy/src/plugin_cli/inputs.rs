//! What `plugin run` feeds a policy: the body, profiles, event and config
//! from its flags, or built-in samples shaped like what the proxy sends
//! (a Posts API feed; profiles as the Officer serves them).

use std::io::Read;
use std::path::Path;

use serde_json::{json, Value};

use super::CliError;
use crate::plugin::bindings::Profile;

/// Where an input came from, for the report.
pub struct Input {
    pub text: String,
    /// "the built-in sample ..." or the file name.
    pub from: String,
    pub sample: bool,
}

/// Ids shaped like the Officer's (and the demo's).
const SAMPLE_AUTHORS: [&str; 2] = [
    "00000001-0000-4000-8000-000000000001",
    "00000002-0000-4000-8000-000000000002",
];

pub fn sample_feed() -> String {
    let [a, b] = SAMPLE_AUTHORS;
    let feed = json!({"posts": [
        {"id": "post-1", "userId": a, "text": "First light over the harbour", "createdAt": "2026-01-05T09:00:00Z"},
        {"id": "post-2", "userId": b, "text": "Cache hit ratio 99.2% today", "createdAt": "2026-01-05T09:05:00Z"},
        {"id": "post-3", "userId": a, "text": "Shipping a new policy", "createdAt": "2026-01-05T09:10:00Z"},
    ]});
    serde_json::to_string_pretty(&feed).unwrap_or_default()
}

pub fn sample_event() -> String {
    json!({"type": "profile-updated", "userId": SAMPLE_AUTHORS[0]}).to_string()
}

/// A profile with every field the Officer sends.
pub fn sample_profile(id: &str) -> Profile {
    let p = json!({
        "id": id,
        "displayName": format!("Sample User {}", id.chars().take(8).collect::<String>()),
        "avatarUrl": format!("https://cdn.example.com/avatars/{id}.png?v=1"),
        "bio": "A sample profile from profile-edge plugin run.",
        "location": "Lisbon",
        "updatedAt": "2026-01-01T00:00:00Z",
        "version": 1,
    });
    Profile {
        id: id.to_string(),
        json: p.to_string(),
    }
}

/// `--body` / `--event`: a file, `-` for stdin, or the sample.
pub fn read_input(
    flag: &str,
    path: Option<&Path>,
    sample: impl FnOnce() -> String,
    what: &str,
) -> Result<Input, CliError> {
    match path {
        None => Ok(Input {
            text: sample(),
            from: format!("the built-in sample {what} (--{flag} FILE for yours)"),
            sample: true,
        }),
        Some(p) if p == Path::new("-") => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| CliError::Usage(format!("--{flag} -: reading stdin: {e}")))?;
            Ok(Input {
                text,
                from: "stdin".into(),
                sample: false,
            })
        }
        Some(p) => Ok(Input {
            text: read_text(flag, p)?,
            from: p.display().to_string(),
            sample: false,
        }),
    }
}

fn read_text(flag: &str, path: &Path) -> Result<String, CliError> {
    std::fs::read_to_string(path)
        .map_err(|e| CliError::Usage(format!("--{flag} {}: {e}", path.display())))
}

/// `--profiles FILE`: a JSON array of profiles, or `{"users": [...]}` as the
/// Officer's batch endpoint answers. Each needs a string `id`.
pub fn read_profiles(path: &Path) -> Result<Vec<Profile>, CliError> {
    let bad = |why: String| CliError::Usage(format!("--profiles {}: {why}", path.display()));
    let doc: Value =
        serde_json::from_str(&read_text("profiles", path)?).map_err(|e| bad(e.to_string()))?;
    let list = match &doc {
        Value::Array(list) => list,
        Value::Object(o) => match o.get("users") {
            Some(Value::Array(list)) => list,
            _ => {
                return Err(bad(
                    "expected a JSON array of profiles or {\"users\": [...]}".into(),
                ))
            }
        },
        _ => {
            return Err(bad(
                "expected a JSON array of profiles or {\"users\": [...]}".into(),
            ))
        }
    };
    list.iter()
        .enumerate()
        .map(|(i, p)| match p.get("id").and_then(Value::as_str) {
            Some(id) => Ok(Profile {
                id: id.to_string(),
                json: p.to_string(),
            }),
            None => Err(bad(format!("profile #{i} has no string \"id\""))),
        })
        .collect()
}

/// `--plugin-config`: JSON text or `@FILE`; like a `config` table, an object.
pub fn read_config(arg: Option<&str>) -> Result<String, CliError> {
    let Some(arg) = arg else {
        return Ok("{}".into());
    };
    let (text, from) = match arg.strip_prefix('@') {
        Some(file) => (
            read_text("plugin-config", Path::new(file))?,
            format!(" {file}"),
        ),
        None => (arg.to_string(), String::new()),
    };
    match serde_json::from_str::<Value>(&text) {
        Ok(v @ Value::Object(_)) => Ok(v.to_string()),
        Ok(_) => Err(CliError::Usage(format!(
            "--plugin-config{from}: must be a JSON object, like a [plugins.NAME] config table"
        ))),
        Err(e) => Err(CliError::Usage(format!(
            "--plugin-config{from}: not JSON: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_must_be_a_json_object() {
        assert_eq!(read_config(None).expect("ok"), "{}");
        assert_eq!(
            read_config(Some(r#"{"mode": "trap"}"#)).expect("ok"),
            r#"{"mode":"trap"}"#
        );
        let e = read_config(Some("[1]")).expect_err("refused").to_string();
        assert!(
            e.starts_with("--plugin-config: must be a JSON object"),
            "{e}"
        );
        let e = read_config(Some("{mode")).expect_err("refused").to_string();
        assert!(e.starts_with("--plugin-config: not JSON"), "{e}");
    }

    #[test]
    fn profiles_come_as_a_list_or_as_the_officers_batch_answer() {
        let dir = tempfile::tempdir().expect("ok");
        let list = dir.path().join("list.json");
        std::fs::write(&list, r#"[{"id":"a","displayName":"A"}]"#).expect("ok");
        let users = dir.path().join("users.json");
        std::fs::write(&users, r#"{"users":[{"id":"b"}]}"#).expect("ok");
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, r#"[{"name":"no id"}]"#).expect("ok");
        assert_eq!(read_profiles(&list).expect("ok")[0].id, "a");
        assert_eq!(read_profiles(&users).expect("ok")[0].id, "b");
        let e = read_profiles(&bad).expect_err("refused").to_string();
        assert!(e.contains("profile #0 has no string \"id\""), "{e}");
    }
}
